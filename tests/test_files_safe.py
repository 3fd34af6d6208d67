"""No tinyllm command destroys a user's file: quantize's output path, pull's destination."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "scripts"))
from synthetic_gguf import write_model  # noqa: E402


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_f32(tmp_path_factory):
    """A small F32 llama (the synthetic model of the quantize fixtures' shape family)."""
    path = tmp_path_factory.mktemp("safe") / "small.F32.gguf"
    write_model(path, n_layer=1, n_embd=64, n_head=2, n_head_kv=1, n_ff=128, n_vocab=96)
    return path


def one_line_error(r, needle):
    """Exit 2, and the error is the last line of stderr (progress lines may come before it)."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("tinyllm: error: ") and needle in last, r.stderr
    assert r.stderr.count("tinyllm: error: ") == 1


def test_quantize_input_named_like_the_old_temp_file(small_f32, tmp_path):
    """`quantize m.gguf.tmp m.gguf` used to write its temp file OUT.tmp, i.e. over its input."""
    src = tmp_path / "m.gguf.tmp"
    src.write_bytes(small_f32.read_bytes())
    before = sha(src)
    r = run_cli("quantize", src, tmp_path / "m.gguf", "--type", "Q8_0")
    assert r.returncode == 0, r.stderr
    assert sha(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.gguf.tmp"]


def test_quantize_leaves_a_users_out_tmp_alone(small_f32, tmp_path):
    mine = tmp_path / "q.gguf.tmp"
    mine.write_text("my notes\n")
    r = run_cli("quantize", small_f32, tmp_path / "q.gguf", "--type", "Q8_0")
    assert r.returncode == 0, r.stderr
    assert mine.read_text() == "my notes\n"


def test_quantize_refuses_an_existing_output_without_force(small_f32, tmp_path):
    out = tmp_path / "q.gguf"
    out.write_text("precious\n")
    one_line_error(run_cli("quantize", small_f32, out, "--type", "Q8_0"), "--force")
    assert out.read_text() == "precious\n"
    assert list(tmp_path.iterdir()) == [out]
    r = run_cli("quantize", small_f32, out, "--type", "Q8_0", "--force")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"GGUF"
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("how", ["hardlink", "symlink"])
def test_quantize_output_that_is_the_input_by_inode(small_f32, tmp_path, how):
    src = tmp_path / "src.gguf"
    src.write_bytes(small_f32.read_bytes())
    out = tmp_path / "other-name.gguf"
    (os.link if how == "hardlink" else os.symlink)(src, out)
    before = sha(src)
    for extra in ([], ["--force"]):
        one_line_error(run_cli("quantize", src, out, "--type", "Q8_0", *extra), "refusing to overwrite the input")
    assert sha(src) == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_quantize_interrupted_leaves_nothing_behind(smollm2_path, tmp_path, sig):
    """Killed while writing (SmolLM2 -> Q8_0 takes a while): no temp file, no OUT."""
    out = tmp_path / "q.gguf"
    p = subprocess.Popen([sys.executable, "-m", "tinyllm", "quantize", smollm2_path, str(out),
                          "--type", "Q8_0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while not any(tmp_path.iterdir()) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    # Stop the process the moment its temp file exists, and check it is still writing:
    # the signal then lands inside the write whatever the machine's load (a sleep before
    # the signal let a busy machine finish the write first).
    p.send_signal(signal.SIGSTOP)
    tmp_files = list(tmp_path.iterdir())
    assert tmp_files and tmp_files[0].name.startswith(".q.gguf.") and tmp_files[0].name.endswith(".tmp")
    assert not out.exists() and p.poll() is None
    p.send_signal(sig)
    p.send_signal(signal.SIGCONT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert b"Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# ---- pull ---------------------------------------------------------------------------------

def registry_entry(name):
    from tinyllm.registry import load_registry
    return load_registry()["models"][name]


@pytest.mark.parametrize("content", ["short", "same-size"])
def test_pull_reports_a_wrong_file_in_place_and_keeps_it(tmp_path, content):
    """A file with the registry's name but other contents is the user's: say so, touch nothing.
    (It used to be trusted when the size matched, and replaced when it did not.)"""
    e = registry_entry("smollm2-135m")
    dest = tmp_path / e["file"]
    with open(dest, "wb") as f:
        if content == "short":
            f.write(b"my own fine-tune\n")
        else:
            f.truncate(e["size"])
    before = sha(dest)
    env = {"TINYLLM_MODELS": str(tmp_path), "PIP_INDEX_URL": "http://127.0.0.1:9/nothing"}
    r = run_cli("pull", "smollm2-135m", env=env)
    one_line_error(r, "not its contents")
    assert "tinyllm pull smollm2-135m" in r.stderr and "move or rename it" in r.stderr
    assert sha(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [e["file"]]
    # and a command that would use it says the same instead of loading a wrong file
    if content == "short":
        one_line_error(run_cli("tokenize", "smollm2-135m", "hi", env=env), "not its contents")


def test_pull_accepts_the_right_file_in_place(tmp_path, smollm2_path):
    e = registry_entry("smollm2-135m")
    os.symlink(os.path.realpath(smollm2_path), tmp_path / e["file"])
    r = run_cli("pull", "smollm2-135m", env={"TINYLLM_MODELS": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stderr.splitlines()[-1]

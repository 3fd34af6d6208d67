"""Bad input gets one clear line on stderr and exit status 2 — never a traceback."""

import struct

import gguf
import numpy as np
import pytest

from conftest import run_cli


def assert_clean_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("tinyllm: error: "), r.stderr
    for n in needles:
        assert n.lower() in last.lower(), (n, last)


def write_small_gguf(path, arch="llama", ttype=np.float32):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=ttype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_missing_registry_model():
    assert_clean_error(run_cli("run", "no-such-model", "-p", "hi"), "unknown model", "no-such-model")


def test_missing_file(tmp_path):
    assert_clean_error(run_cli("run", tmp_path / "nope.gguf", "-p", "hi"), "not found")


def test_not_a_gguf(tmp_path):
    p = tmp_path / "notes.gguf"
    p.write_text("these are not weights\n")
    assert_clean_error(run_cli("run", p, "-p", "hi"), "not a GGUF")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.gguf"
    p.write_bytes(b"")
    assert_clean_error(run_cli("run", p, "-p", "hi"), "empty")


@pytest.mark.parametrize("n_bytes,needle", [(100, "truncated"), (3_000_000, "truncated")])
def test_truncated_gguf(tmp_path, smollm2_path, n_bytes, needle):
    p = tmp_path / "cut.gguf"
    with open(smollm2_path, "rb") as f:
        p.write_bytes(f.read(n_bytes))
    assert_clean_error(run_cli("run", p, "-p", "hi"), needle)


def test_unknown_architecture(tmp_path):
    p = write_small_gguf(tmp_path / "arch.gguf", arch="mamba9")
    assert_clean_error(run_cli("run", p, "-p", "hi"), "mamba9", "supported", "llama", "gemma3")


def test_unknown_tensor_type(tmp_path):
    p = write_small_gguf(tmp_path / "type.gguf")
    data = bytearray(p.read_bytes())
    # The tensor info ends with: type u32 | offset u64.  Find "token_embd.weight" and patch the type.
    name = b"token_embd.weight"
    at = data.index(name) + len(name) + 4 + 2 * 8        # skip n_dims and two dims
    assert struct.unpack_from("<I", data, at)[0] == 0    # F32
    struct.pack_into("<I", data, at, 77)
    p.write_bytes(bytes(data))
    assert_clean_error(run_cli("run", p, "-p", "hi"), "type")


def test_prompt_longer_than_context(smollm2_path):
    r = run_cli("run", smollm2_path, "--ctx", "16", "-n", "4", "-p", "word " * 50)
    assert_clean_error(r, "longer than the context")


def test_tokenize_missing_model():
    assert_clean_error(run_cli("tokenize", "nope.gguf", "hi"), "not found")

"""The memory check before loading, and the start-up options it goes with (--threads, --ctx)."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli
from tinyllm import memory
from tinyllm.errors import TinyLLMError
from tinyllm.gguf_file import GGUFFile


def plan_for(path, n_ctx=2048, kv_type="f16"):
    return memory.MemoryPlan.from_gguf(GGUFFile(path), n_ctx, kv_type, 256, True, count_tokenizer=False)


def test_check_fits_compares_the_plan_with_what_is_available(smollm2_path):
    plan = plan_for(smollm2_path, 8192)
    need = memory.load_bytes(plan)
    # weights + the whole KV cache + scratch + tables: SmolLM2 at 8k f16 is ~280 MiB
    assert plan.file_bytes + plan.kv_full < need < plan.file_bytes + plan.kv_full + 64 * 2**20
    memory.check_fits(plan, available=need, source="test")           # fits exactly: no error
    with pytest.raises(TinyLLMError) as e:
        memory.check_fits(plan, available=need - 1, source="test")
    msg = str(e.value)
    assert f"{need / 2**20:,.0f} MiB" in msg and f"{(need - 1) / 2**20:,.0f} MiB is available (test)" in msg
    assert "--ctx 4096 would fit" in msg and "--kv-type q8_0" in msg and "smaller quantization" in msg
    assert "--no-mem-check" in msg and "\n" not in msg


def test_the_hint_names_a_context_that_fits(smollm2_path):
    plan = plan_for(smollm2_path, 8192)
    small = memory.load_bytes(plan_for(smollm2_path, 1024))
    with pytest.raises(TinyLLMError, match="--ctx 1024 would fit"):
        memory.check_fits(plan, available=small, source="test")


def test_available_bytes_reads_meminfo():
    avail, source = memory.available_bytes()
    assert source == "MemAvailable"
    with open("/proc/meminfo") as f:
        total = int(next(ln for ln in f if ln.startswith("MemTotal:")).split()[1]) * 1024
    assert 0 < avail <= total


def test_available_bytes_honours_an_address_space_limit():
    code = ("import resource\n"
            "from tinyllm import memory\n"
            "vm = memory._proc_kb_fields('/proc/self/status')['VmSize']\n"
            "resource.setrlimit(resource.RLIMIT_AS, (vm + 300 * 2**20, resource.RLIM_INFINITY))\n"
            "avail, source = memory.available_bytes()\n"
            "print(avail // 2**20, source)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    left, source = r.stdout.split(" ", 1)
    assert 250 <= int(left) <= 300 and "address-space limit" in source


def test_run_refuses_a_plan_that_does_not_fit():
    """16M cells of f16 cache for SmolLM2 is 360 GiB: refused before loading, with a hint.
    (Such a header used to be loaded anyway and crash later.)"""
    r = run_cli("run", "smollm2-135m", "--ctx", 2**24, "-p", "hi", "-n", "1")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("tinyllm: error: not enough memory")
    assert "MemAvailable" in lines[-1] and "--ctx 8192 would fit" in lines[-1]
    assert any("longer than the 8192 tokens" in ln for ln in lines[:-1])     # the --ctx warning


SMALL_MEMORY = ("import sys\n"
                "from tinyllm import cli\n"
                "from tinyllm import memory\n"
                "memory.available_bytes = lambda: (64 * 2**20, 'pretend')\n"
                "sys.exit(cli.main(sys.argv[1:]))\n")


@pytest.mark.parametrize("verb", [["run", "-p", "hi", "-n", "1"], ["bench", "-p", "8", "-n", "1"], ["chat"]])
def test_every_loading_verb_checks_and_the_override_skips_it(verb):
    """With 64 MiB 'available', SmolLM2 (94 MiB of weights) is refused by run, bench and
    chat; --no-mem-check loads it anyway."""
    args = [verb[0], "smollm2-135m", *verb[1:], "--temp", "0"] if verb[0] != "bench" else \
        [verb[0], "smollm2-135m", *verb[1:]]
    r = subprocess.run([sys.executable, "-c", SMALL_MEMORY, *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=900, input="/bye\n")
    assert r.returncode == 2, r.stderr
    assert "not enough memory" in r.stderr and "64 MiB is available (pretend)" in r.stderr
    r = subprocess.run([sys.executable, "-c", SMALL_MEMORY, *args, "--no-mem-check"], capture_output=True,
                       text=True, cwd=ROOT, timeout=900, input="/bye\n")
    assert r.returncode == 0, r.stderr
    assert "not enough memory" not in r.stderr


@pytest.mark.parametrize("n", [0, -1, 1000])
def test_threads_out_of_range(n):
    cores = len(os.sched_getaffinity(0))
    r = run_cli("run", "smollm2-135m", "-p", "hi", "--threads", n)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"tinyllm: error: --threads must be between 1 and {cores} "
                                f"(the cores available here), got {n}")

"""The one start-up path: `tinyllm warmup` compiles ahead, a second start is silent, and
the numerics default (TINYLLM_ACTIVATIONS) is checked once, with one clear line."""

from conftest import run_cli


def test_warmup_then_a_warm_start(smollm2_path):
    first = run_cli("warmup", "smollm2-135m")
    assert first.returncode == 0, first.stderr
    assert "kernels for Q4_1, Q8_0 (llama numerics) ready" in first.stderr
    # only this model's formats, by role: never another format's kernel
    for line in first.stderr.splitlines():
        if "compiling" in line and "kernels:" in line:
            assert any(f"{t} " in line for t in ("Q4_1", "Q8_0")) or "attention" in line \
                or "norms" in line, line
    second = run_cli("warmup", "smollm2-135m")
    assert second.returncode == 0, second.stderr
    assert "compiling" not in second.stderr


def test_unknown_numerics_is_one_clear_error(smollm2_path):
    r = run_cli("run", "smollm2-135m", "-p", "hi", "-n", "1", env={"TINYLLM_ACTIVATIONS": "fast"})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "tinyllm: error: TINYLLM_ACTIVATIONS='fast': expected one of decode, exact, llama"]

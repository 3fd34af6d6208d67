"""Shared fixtures: the real models, pulled into models/ once and cached there."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def _pulled(name: str) -> str:
    from tinyllm.registry import resolve
    return resolve(name, pull_if_missing=True, log=lambda m: print(m, file=sys.stderr))


QWEN15 = "qwen2.5-coder-1.5b"


def qwen15_enabled() -> bool:
    """Qwen2.5-Coder-1.5B (a 1.1 GB download) is tested when its file is already in
    models/, or when TINYLLM_TEST_QWEN15=1 asks for it (then it is pulled at session
    start); otherwise its cases are not collected.  Nor in a 32-bit process unless asked
    for: its 1,066 MiB do not map there (armhf under qemu: ENOMEM, which tinyllm reports
    in one line), so a models/ shared with a 64-bit run must not fail the armhf job."""
    from tinyllm.registry import load_registry, models_dir
    if os.environ.get("TINYLLM_TEST_QWEN15") == "1":
        return True
    if sys.maxsize < 2**32:
        return False
    return (models_dir() / load_registry()["models"][QWEN15]["file"]).is_file()


def pytest_sessionstart(session):
    """Pull the real models before collection: some tests are parametrized by the
    tensors these files hold. On a fresh machine this downloads ~810 MiB once
    (SmolLM2-135M, Gemma 3 270M, Qwen2.5-Coder-0.5B)."""
    for name in ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"):
        _pulled(name)
    if qwen15_enabled():
        _pulled(QWEN15)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    return _pulled("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_path() -> str:
    return _pulled("gemma3-270m")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """(Model, Tokenizer) for SmolLM2 with a 2048-token context."""
    return _model_and_tokenizer(smollm2_path)


def kl(p_logits, q_logits) -> float:
    """KL(p || q) of the softmax distributions of two logit vectors, in nats (float64)."""
    from tinyllm.tools.perplexity import log_softmax
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float(np.sum(np.exp(lp) * (lp - lq)))


def run_cli(*args, input=None, timeout=600, env=None):
    """Run `python -m tinyllm ARGS` in a fresh process; returns CompletedProcess."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "tinyllm", *map(str, args)], input=input,
                          capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)


@pytest.fixture(scope="session")
def gemma3(gemma3_path):
    """(Model, Tokenizer) for Gemma 3 270M with a 2048-token context."""
    return _model_and_tokenizer(gemma3_path)


def _model_and_tokenizer(path):
    """(Model, Tokenizer) over a 2048-token context: every real-model fixture."""
    from tinyllm.model import Model
    from tinyllm.tokenizer import Tokenizer
    m = Model(path, n_ctx=2048, numerics="decode")   # prompts exact: compared with llama.cpp's F32 copy
    return m, Tokenizer.from_gguf(m.gguf)


@pytest.fixture(scope="session")
def qwen05_path() -> str:
    return _pulled("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def qwen15_path() -> str:
    return _pulled(QWEN15)


@pytest.fixture(scope="session")
def qwen05(qwen05_path):
    """(Model, Tokenizer) for Qwen2.5-Coder-0.5B-Instruct with a 2048-token context."""
    return _model_and_tokenizer(qwen05_path)


@pytest.fixture(scope="session")
def qwen15(qwen15_path):
    """(Model, Tokenizer) for Qwen2.5-Coder-1.5B-Instruct with a 2048-token context."""
    return _model_and_tokenizer(qwen15_path)


# ---- the ARM CI job's subsets (.ci/arm.sh runs `pytest -m arm` / `-m armhf` under qemu) ----
# Emulation is 10-30x slower than native and a cold numba compile 6-8x, so the job runs
# the tests whose code differs by CPU: each decode and prefill kernel against its numpy
# oracle, attention, the norms/rope/top-k kernels, and agreement with llama.cpp on both
# models.  Named by test function (any parametrization), or by full test name for one
# parametrization, so that the list survives tests moving between files.
ARM_TESTS = {
    # every format: numba prefill kernel and one-token decode against numpy / float64
    "test_linear_matches_references",
    "test_linear_on_real_layers",
    "test_int8_kernels_equal_the_rounding_oracle",   # decode and prefill; native (dotprod) and neon
    "test_kernel_unpack_row_is_the_dequantization",
    "test_activation_quantizers_numba_equal_numpy",
    "test_round_to_f16_matches_numpy",
    "test_numba_kernel_matches_numpy_reference",             # flash attention, every KV type
    "test_f16_and_f32_round_trip_including_specials",        # the tile reader's F16 vectors
    "test_row_layouts_and_numba_numpy_agreement",
    "test_rms_norm_matches_numpy", "test_rope_matches_numpy", "test_top_k_matches_numpy",
    "test_expf_is_within_a_float32_ulp", "test_swiglu_matches_numpy", "test_geglu_matches_numpy",
    "test_linears_stack_matrices_into_one_call_with_the_same_numbers",   # decode, 3 matrices a call
    # SmolLM2 and Gemma 3 against llama.cpp's logits and greedy tokens
    "test_prompt_ids_match_llama_cpp",
    "test_final_logits_match_llama_cpp",
    "test_int8_decode_follows_llama_cpp_on_the_quantized_file",
}
# 32-bit Pi OS: no numba, so the numpy path, on Debian's numpy 1.24 and regex 2022.10.31
ARMHF_TESTS = {
    "test_linear_matches_references",
    "test_dequantize_random_blocks_bit_exact",
    "test_no_numba_env_really_disables_numba",
    "test_a_numba_older_than_supported_is_never_imported",
    "test_ids_match_llama_cpp", "test_prompt_ids_match_llama_cpp", "test_decode_round_trips",
    "test_final_logits_match_llama_cpp[smollm2-135m]",
}
# what the ARM job repeats as a Pi 4 (qemu's cortex-a72: no dotprod, so a wrongly chosen
# sdot would be an illegal instruction): the int8 kernels on the paths it can run
ARM_CPU_TESTS = {"test_int8_kernels_equal_the_rounding_oracle"}


def pytest_configure(config):
    config.addinivalue_line("markers", "arm: the subset .ci/arm.sh runs on aarch64 under qemu")
    config.addinivalue_line("markers", "armhf: the subset .ci/arm.sh runs on 32-bit ARM (numpy path)")
    config.addinivalue_line("markers", "arm_cpu: the int8 kernel tests .ci/arm.sh runs under each aarch64 CPU")


# the real models the ARM job runs the model-running agreement tests on (issue 14: SmolLM2
# and Gemma 3); on Qwen they run the same kernels again and are the slowest tests under
# emulation.  (The tokenizer tests still run on every model: Qwen's pre-tokenizer regex
# is its own, and armhf has Debian's older regex.)
ARM_MODELS = ("smollm2-135m", "gemma3-270m")
ARM_FORWARD_TESTS = {"test_final_logits_match_llama_cpp", "test_int8_decode_follows_llama_cpp_on_the_quantized_file"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = {item.name, getattr(item, "originalname", item.name)}
        model = getattr(getattr(item, "callspec", None), "id", "")
        if names & ARM_FORWARD_TESTS and model and model not in ARM_MODELS:
            continue
        for marker, wanted in (("arm", ARM_TESTS), ("armhf", ARMHF_TESTS), ("arm_cpu", ARM_CPU_TESTS)):
            if names & wanted:
                item.add_marker(marker)

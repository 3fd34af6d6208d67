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
    start); otherwise its cases are not collected."""
    from tinyllm.registry import load_registry, models_dir
    if os.environ.get("TINYLLM_TEST_QWEN15") == "1":
        return True
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
    from tinyllm.model import Model
    from tinyllm.tokenizer import Tokenizer
    m = Model(smollm2_path, n_ctx=2048)
    return m, Tokenizer.from_gguf(m.gguf)


def kl(p_logits, q_logits) -> float:
    """KL(p || q) of the softmax distributions of two logit vectors, in nats (float64)."""
    from tinyllm.perplexity import log_softmax
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
    from tinyllm.model import Model
    from tinyllm.tokenizer import Tokenizer
    m = Model(gemma3_path, n_ctx=2048)
    return m, Tokenizer.from_gguf(m.gguf)


def _model_and_tokenizer(path):
    from tinyllm.model import Model
    from tinyllm.tokenizer import Tokenizer
    m = Model(path, n_ctx=2048)
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

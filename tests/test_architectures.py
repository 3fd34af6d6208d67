"""Every supported architecture against llama.cpp, on small random-weight models.

No real qwen2 / qwen3 / Llama-3 weights ship offline, so scripts/synthetic_gguf.py
writes models with each family's real metadata keys and tensor names (F32 weights,
SmolLM2's vocabulary cut to 8192 entries); scripts/make_synthetic_fixtures.py
stored llama.cpp's logits for the same files. This exercises what differs between
families: adjacent vs split-half RoPE pairs, Llama 3 rope_freqs, Q/K/V biases,
Q/K norms, Gemma's embedding scale, post-norms, GeGLU and sliding-window layers.
"""

import sys

import numpy as np
import pytest

from conftest import FIXTURES, ROOT, kl

sys.path.insert(0, str(ROOT / "scripts"))
from synthetic_gguf import ARCHS, write_model  # noqa: E402


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_matches_llama_cpp(arch, tmp_path, smollm2_path):
    from tinyllm.model import Model
    ref = np.load(FIXTURES / "synthetic" / f"{arch}.npz")
    path = write_model(tmp_path / f"{arch}.gguf", arch, n_vocab=len(ref["final_logits"]), seed=0)
    model = Model(str(path), n_ctx=256, numerics="decode")   # the prompt exact: KL <= 1e-4
    ids = ref["ids"].tolist()
    logits = model.forward(ids, 0)
    d = kl(ref["final_logits"], logits)
    print(f"{arch}: KL(llama.cpp || tinyllm) = {d:.2e}")
    assert int(np.argmax(logits)) == int(np.argmax(ref["final_logits"]))
    assert d <= 1e-4
    # greedy, compared up to llama.cpp's first step with a top-1/top-2 gap <= 0.05
    margins = ref["margins"]
    n = next((i for i, m in enumerate(margins) if m <= 0.05), len(margins))
    ours, pos = [], len(ids)
    for _ in range(n):
        t = int(np.argmax(logits))
        ours.append(t)
        logits = model.forward([t], pos)
        pos += 1
    assert ours == ref["greedy"][:n].tolist()

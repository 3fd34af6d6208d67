"""llama.cpp's logits on the small random-weight models of scripts/synthetic_gguf.py.

    /path/to/llama-cpp-venv/bin/python scripts/make_synthetic_fixtures.py

For each architecture (llama, llama3 rope scaling, qwen2, qwen3, gemma3) it writes
the model (deterministic: fixed seed, SmolLM2's first 8192 vocabulary entries),
runs llama.cpp on a fixed 96-token prompt (longer than gemma3's 64-cell test window) and stores, in
tests/fixtures/synthetic/<arch>.npz: the prompt ids, the final-position logits,
and a 16-step greedy continuation with the top-1/top-2 logit gap at each step.
tests/test_architectures.py rebuilds the same files and compares tinyllm.
The weights are F32, so no activation rounding is involved on either side.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from synthetic_gguf import ARCHS, write_model  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "synthetic"
N_VOCAB = 8192
PROMPT = [int(i) for i in np.random.default_rng(7).integers(100, N_VOCAB, size=96)]
N_STEPS = 16


def main():
    import llama_cpp
    from llama_cpp import Llama
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            path = Path(tmp) / f"{arch}.gguf"
            write_model(path, arch, n_vocab=N_VOCAB, seed=0)
            llm = Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)

            def last():
                ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
                return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32).copy()

            llm.eval(PROMPT)
            final = last()
            tokens, margins, logits = [], [], final
            for _ in range(N_STEPS):
                top2 = np.sort(logits)[-2:]
                tok = int(np.argmax(logits))
                tokens.append(tok)
                margins.append(float(top2[1] - top2[0]))
                llm.eval([tok])
                logits = last()
            np.savez_compressed(OUT / f"{arch}.npz", ids=np.array(PROMPT), final_logits=final,
                                greedy=np.array(tokens), margins=np.array(margins),
                                llama_cpp_python=llama_cpp.__version__)
            print(arch, "argmax", int(np.argmax(final)), "greedy", tokens[:6], "min margin", min(margins))
            del llm


if __name__ == "__main__":
    main()

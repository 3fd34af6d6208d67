"""llama.cpp-made IQ4_NL and IQ4_XS model files, kept as data, and llama.cpp's logits on them.

    /work/refenv/venv/bin/python scripts/make_iq4_fixtures.py          # ~10 s

tinyllm reads IQ4_NL and IQ4_XS but cannot write IQ4_XS, CI cannot run llama.cpp
and .gguf files are not committed, so the files llama.cpp quantized are stored as
their tensor bytes plus their metadata, and tests/test_iq4_models.py writes them
again with gguf.GGUFWriter (synthetic_gguf.rebuild_gguf: byte for byte the same file).

The model: scripts/synthetic_gguf.py's random llama with 1 layer, n_embd 256 and
n_ff 512 (every row a whole number of 256-weight super-blocks; ffn_down's rows hold
two) and SmolLM2's first 256 vocabulary entries (the test feeds token ids, no
tokenizer is involved).  llama_model_quantize makes it MOSTLY_IQ4_NL and MOSTLY_IQ4_XS
with `pure` set, so every matrix, token_embd and output included, has the type;
without `pure` llama.cpp gives output.weight Q6_K (recorded as default_mix).

Writes tests/fixtures/iq4_models/:
  <T>.npz     (T = IQ4_NL, IQ4_XS) every tensor of llama.cpp's file as raw bytes
              (key = tensor name, uint8 shaped (rows, bytes per row)); logits_q
              (prompts, vocab) float32, llama.cpp's final-position logits on that
              file; logits_f32, the same on an F32 copy of it (LLAMA_FTYPE_ALL_F32:
              exactly the dequantized weights, so no activation rounding either side).
  models.json the model's parameters, the prompts (token ids) and per type: the
              file's sha256 and size, its metadata and tensor list (name, type, ne,
              sha256) for rebuild_gguf, the default (not pure) mix, and llama.cpp's
              own numbers: argmax, top-1/top-2 margin, KL(quantized || F32 copy) and
              KL(batched || one token per decode call) per prompt.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from make_quant_model_fixtures import kl, llama_logits, llama_quantize, tensor_types, write_json  # noqa: E402
from synthetic_gguf import describe_gguf, write_model  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "iq4_models"
TYPES = ("IQ4_NL", "IQ4_XS")
MODEL = dict(arch="llama", n_layer=1, n_embd=256, n_ff=512, n_head=4, n_head_kv=2,
             n_vocab=256, seed=3)
_rng = np.random.default_rng(17)
PROMPTS = [[int(i) for i in _rng.integers(17, MODEL["n_vocab"], size=n)] for n in (24, 40)]


def main():
    import llama_cpp
    OUT.mkdir(parents=True, exist_ok=True)
    fixture = {"llama_cpp_python": llama_cpp.__version__, "model": MODEL, "prompts": PROMPTS, "types": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = write_model(tmp / "synthetic.F32.gguf", **MODEL)
        for T in TYPES:
            q, f32, mix = tmp / f"{T}.gguf", tmp / f"{T}.F32.gguf", tmp / f"{T}.mix.gguf"
            llama_quantize(src, q, T, pure=True)
            llama_quantize(q, f32, "F32")
            llama_quantize(src, mix, T)
            spec, tensors = describe_gguf(q)
            lq = np.stack([llama_logits(q, p) for p in PROMPTS])
            lf = np.stack([llama_logits(f32, p) for p in PROMPTS])
            l1 = np.stack([llama_logits(q, p, n_batch=1) for p in PROMPTS])
            np.savez_compressed(OUT / f"{T}.npz", logits_q=lq.astype(np.float32),
                                logits_f32=lf.astype(np.float32), **tensors)
            top2 = np.sort(lq, axis=1)[:, -2:]
            fixture["types"][T] = {
                "file_sha256": hashlib.sha256(q.read_bytes()).hexdigest(),
                "file_bytes": q.stat().st_size,
                "types": {n: t for n, t, _, _ in spec["tensors"]},
                "default_mix": tensor_types(mix),
                "llama_cpp": {
                    "argmax": [int(i) for i in lq.argmax(axis=1)],
                    "top2_margin": [float(b - a) for a, b in top2],
                    "kl_quantized_vs_f32_copy": [kl(a, b) for a, b in zip(lq, lf)],
                    "kl_batched_vs_one_token": [kl(a, b) for a, b in zip(lq, l1)],
                    "argmax_f32_copy": [int(i) for i in lf.argmax(axis=1)],
                },
                "spec": spec,
            }
            r = fixture["types"][T]
            print(f"{T}: {r['file_bytes']} bytes, {sorted(set(r['types'].values()))}; default mix "
                  f"{ {n: t for n, t in r['default_mix'].items() if t != r['types'][n]} }; llama.cpp "
                  f"argmax {r['llama_cpp']['argmax']} margin {np.round(r['llama_cpp']['top2_margin'], 3).tolist()} "
                  f"KL(q||f32) {np.array(r['llama_cpp']['kl_quantized_vs_f32_copy'])} "
                  f"KL(batch||1) {np.array(r['llama_cpp']['kl_batched_vs_one_token'])}", flush=True)
    write_json(OUT / "models.json", fixture)
    print(OUT, sum(f.stat().st_size for f in OUT.iterdir()), "bytes")


if __name__ == "__main__":
    main()

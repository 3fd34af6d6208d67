"""A synthetic ~1B llama-shaped model in several quant types, for scripts/bench_speed.py.

    python scripts/make_bench_1b.py [--types Q4_0,Q4_K,Q6_K,Q8_0] [--n-layer 16 --n-embd 2048]
        [--llama-python /path/to/venv/bin/python]

Shape (the defaults): TinyLlama-1.1B's widths with Llama-3.2-1B's 16 layers:
n_embd 2048, n_ff 5632, 32 heads of 64, 4 KV heads, SmolLM2's 49152-token
vocabulary with an untied output head: 0.9B parameters. A smaller --n-embd
keeps the proportions (n_ff = 2.75 n_embd rounded up to 256, heads of 64,
n_head / 8 KV heads), for quick checks.

scripts/synthetic_gguf.py writes the random F16 weights (one tensor in memory
at a time), then llama.cpp's quantizer (llama_model_quantize, run in the
llama-cpp-python venv) makes one file per type with `pure` set: every matrix,
token_embd and output included, gets the named type, so each row of the
benchmark times one kernel. (llama.cpp's default mixes would give Q4_0 and
Q4_K_M a Q6_K output head, and Q4_K_M Q6_K in half the attn_v/ffn_down.)

Files go to models/bench/ (git-ignored), named llama-<layers>x<n_embd>.<TYPE>.gguf.
Existing files are kept, not rebuilt.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "bench"
TYPES = ("Q4_0", "Q4_K", "Q6_K", "Q8_0")
FTYPE = {"Q4_0": "Q4_0", "Q4_K": "Q4_K_M", "Q6_K": "Q6_K", "Q8_0": "Q8_0"}  # with pure: all one type

# Runs inside the llama-cpp-python venv.
LLAMA_QUANTIZE = r"""
import ctypes, sys, llama_cpp
src, dst, ftype = sys.argv[1:4]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype)
params.pure = True
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))
"""


def shape(n_layer: int = 16, n_embd: int = 2048) -> dict:
    n_head = n_embd // 64
    return dict(n_layer=n_layer, n_embd=n_embd, n_ff=-(-int(2.75 * n_embd) // 256) * 256,
                n_head=n_head, n_head_kv=max(1, n_head // 8))


def _made(path: Path, what: str, t0: float) -> None:
    print(f"built {path.name}: {path.stat().st_size / 2**30:.2f} GiB in {time.time() - t0:.0f} s ({what})",
          file=sys.stderr, flush=True)


def build(types=TYPES, llama_python: str | None = None, n_layer: int = 16, n_embd: int = 2048) -> dict:
    """{type: path} of the quantized files, building whatever is missing."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from synthetic_gguf import write_model

    OUT.mkdir(parents=True, exist_ok=True)
    stem = OUT / f"llama-{n_layer}x{n_embd}"
    paths = {t: Path(f"{stem}.{t}.gguf") for t in types}
    missing = [t for t, p in paths.items() if not p.exists()]
    if not missing:
        return paths
    if llama_python is None:
        raise SystemExit(f"need llama-cpp-python to quantize {', '.join(missing)}: pass --llama-python")
    f16 = Path(f"{stem}.F16.gguf")
    if not f16.exists():
        t0, tmp = time.time(), f16.with_suffix(".part")
        write_model(tmp, "llama", seed=0, dtype=np.float16, **shape(n_layer, n_embd))
        tmp.rename(f16)
        _made(f16, "random weights", t0)
    for t in missing:
        t0, tmp = time.time(), paths[t].with_suffix(".part")
        r = subprocess.run([llama_python, "-c", LLAMA_QUANTIZE, str(f16), str(tmp), FTYPE[t]],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"llama_model_quantize({f16.name}, {t}) failed: {r.returncode}\n{r.stderr[-2000:]}")
        tmp.rename(paths[t])
        _made(paths[t], f"llama.cpp quantize, pure {t}", t0)
    return paths


def default_llama_python() -> str | None:
    """LLAMA_PYTHON, else this interpreter if it has llama_cpp, else the project's reference venv."""
    if os.environ.get("LLAMA_PYTHON"):
        return os.environ["LLAMA_PYTHON"]
    try:
        import llama_cpp  # noqa: F401
        return sys.executable
    except ImportError:
        default = Path("/work/refenv/venv/bin/python")
        return str(default) if default.exists() else None


def parse_types(s: str) -> list:
    types = [t.strip().upper() for t in s.split(",") if t.strip()]
    bad = [t for t in types if t not in TYPES]
    if bad:
        raise SystemExit(f"unknown type {', '.join(bad)}: choose from {', '.join(TYPES)}")
    return types


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated, from " + ", ".join(TYPES))
    ap.add_argument("--n-layer", type=int, default=16)
    ap.add_argument("--n-embd", type=int, default=2048)
    ap.add_argument("--llama-python", default=default_llama_python())
    a = ap.parse_args()
    for t, p in build(parse_types(a.types), a.llama_python, a.n_layer, a.n_embd).items():
        print(t, p)


if __name__ == "__main__":
    main()

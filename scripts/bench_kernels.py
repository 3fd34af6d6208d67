"""Measure the quantized kernels: matvec GB/s (weight bytes / time) and prefill GFLOP/s.

    .venv/bin/python scripts/bench_kernels.py                 # all types, default shapes
    .venv/bin/python scripts/bench_kernels.py Q8_0 Q4_1       # some types
    .venv/bin/python scripts/bench_kernels.py --overhead      # per-call cost on tiny matrices
    .venv/bin/python scripts/bench_kernels.py Q4_K --prefill-only --threads 1   # float vs int8 prefill

The matvec columns time a decode step (linear(..., decode=True)): int8 activations for
Q8_0/Q4_0/Q4_1/Q5_0/Q4_K/Q6_K (their matvec_int8); --numerics exact times the float
kernels instead.  The prefill columns time T = --tokens tokens (on matrices up to 8960
rows), "float" with x as it is (numerics exact: rows.prefill_rows) and "int8" with x
rounded (numerics llama: the int8 prefill kernels where the format has one), per
thread count; --prefill-only skips the matvecs.

Weights are random blocks made by gguf's quantizer (or random bytes with sane
scales for types gguf cannot quantize), so no model file is needed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from gguf import GGMLQuantizationType, quants

from tinyllm import jit
from tinyllm.startup import default_numerics, warm_kernels
from tinyllm.quant import FORMATS, QTensor, linear

SHAPES = [(5632, 2048), (2048, 5632), (576, 576), (1536, 576), (262144, 640)]   # (n_rows, n_cols)
# Qwen2.5-Coder-1.5B's attn_q, ffn_up and ffn_down (the widest row), for --prefill-only
PREFILL_SHAPES = [(1536, 1536), (8960, 1536), (1536, 8960), (576, 576)]


def random_weights(name: str, n_rows: int, n_cols: int, rng) -> np.ndarray:
    f = FORMATS[name]
    try:
        # quantize a few rows and tile them: quantizing 262144 rows in numpy is slow
        base = rng.standard_normal((min(n_rows, 256), n_cols)).astype(np.float32)
        q = np.asarray(quants.quantize(base, GGMLQuantizationType[name])).view(np.uint8)
        q = q.reshape(base.shape[0], -1)
    except NotImplementedError:
        q = rng.integers(0, 256, (min(n_rows, 256), n_cols // f.block_size * f.type_size),
                         dtype=np.uint8)
        blocks = q.reshape(-1, f.type_size)
        blocks[:, :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # d, finite
    reps = -(-n_rows // q.shape[0])
    return np.ascontiguousarray(np.tile(q, (reps, 1))[:n_rows])


def best_time(fn, min_time=0.5, min_calls=5):
    """Fastest single call: on a shared machine the minimum is the undisturbed speed."""
    fn()
    best, t_end, n = float("inf"), time.perf_counter() + min_time, 0
    while n < min_calls or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        n += 1
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("types", nargs="*", default=[n for n in FORMATS if n != "F32"])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--tokens", type=int, default=128, help="T for the prefill matmul")
    ap.add_argument("--overhead", action="store_true", help="also time tiny matvecs")
    ap.add_argument("--no-matmul", action="store_true")
    ap.add_argument("--numerics", default=default_numerics(), choices=["decode", "exact", "llama"],
                    help="of the matvecs; exact: the float decode kernels (default: TINYLLM_ACTIVATIONS, else llama)")
    ap.add_argument("--prefill-only", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    threads = [int(t) for t in args.threads.split(",")]
    print(f"numba: {jit.HAVE_NUMBA}   threads: {threads}   load: {open('/proc/loadavg').read().split()[:3]}")
    print(f"{'type':6s} {'shape':>12s} {'MB':>7s} " + " ".join(
        f"{'mv ' + str(n) + 't':>14s}" for n in threads) + (
        "" if args.no_matmul else f"   prefill T={args.tokens} GFLOP/s float/int8 " +
        " ".join(f"{n}t" for n in threads)))
    for name in args.types:
        for numerics in {args.numerics, "exact", "llama"}:
            warm_kernels([name], numerics, progress=lambda s: print("  " + s))
        for n_rows, n_cols in PREFILL_SHAPES if args.prefill_only else SHAPES:
            if n_cols % FORMATS[name].block_size:
                continue
            w = QTensor(random_weights(name, n_rows, n_cols, rng), FORMATS[name].ggml_type, n_cols)
            x = rng.standard_normal(n_cols).astype(np.float32)
            y = np.empty(n_rows, np.float32)
            cells = []
            for th in threads if not args.prefill_only else []:
                jit.set_threads(th)
                dt = best_time(lambda: linear(x, w, y, decode=True, numerics=args.numerics))
                cells.append(f"{dt * 1e6:7.0f}us {w.nbytes / dt / 1e9:4.1f}")
            line = f"{name:6s} {n_rows:>6d}x{n_cols:<5d} {w.nbytes / 1e6:7.1f} " + " ".join(
                f"{c:>14s}" for c in cells)
            if not args.no_matmul and n_rows <= 8960:
                X = rng.standard_normal((args.tokens, n_cols)).astype(np.float32)
                Y = np.empty((args.tokens, n_rows), np.float32)
                cells = []
                for th in threads:
                    jit.set_threads(th)
                    speed = []
                    for numerics in ("exact", "llama"):       # A/B in the same second
                        dt = best_time(lambda: linear(X, w, Y, numerics=numerics), min_time=1.0, min_calls=3)
                        speed.append(f"{2 * n_rows * n_cols * args.tokens / dt / 1e9:5.1f}")
                    cells.append("/".join(speed))
                line += "   " + "  ".join(cells)
            print(line, flush=True)
        if args.overhead:
            for n_rows, n_cols in [(192, 576), (576, 576)]:
                if n_cols % FORMATS[name].block_size:
                    continue
                w = QTensor(random_weights(name, n_rows, n_cols, rng), FORMATS[name].ggml_type,
                            n_cols)
                x = rng.standard_normal(n_cols).astype(np.float32)
                y = np.empty(n_rows, np.float32)
                cells = []
                for th in threads:
                    jit.set_threads(th)
                    cells.append(f"{best_time(lambda: linear(x, w, y, decode=True, numerics=args.numerics)) * 1e6:6.1f}us")
                print(f"{name:6s} {n_rows:>6d}x{n_cols:<5d} per call: " + "  ".join(cells))


if __name__ == "__main__":
    main()

"""Decode attention cost per layer call, SmolLM2-135M shapes (9 heads, 3 KV heads, head_dim 64).

    python scripts/bench_attention.py [--threads N] [--prefill T]
    python scripts/bench_attention.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf

For each KV type and context length: microseconds per attention() call for one new token
(flash vs classic), and per cache.store() call.  Multiply by n_layer (30) for a token.
With --model: whole decode steps of the real model at 128 / 1024 / 2000 tokens of context,
and the share of each token spent in attention.
Timings are the best of --repeat runs (other processes on the machine only add time).
--clock cpu times with process CPU time (all threads summed) instead of the wall clock:
on a loaded machine that still compares two code versions or two context lengths.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tinyllm import jit

CLOCK = time.perf_counter
from tinyllm.attention import attention
from tinyllm.kvcache import KVCache


def best_us(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = CLOCK()
        fn()
        best = min(best, CLOCK() - t)
    return best * 1e6


def bench_model(path, repeat, kv_types=("f16", "q8_0"), flashes=(True, False)):
    import tinyllm.model as model_module
    from tinyllm.model import Model
    text_ids = np.random.default_rng(0).integers(100, 30000, 2100).tolist()
    spent = [0.0]
    attention_fn = model_module.attention

    def timed_attention(*a, **kw):
        t = CLOCK()
        out = attention_fn(*a, **kw)
        spent[0] += CLOCK() - t
        return out

    model_module.attention = timed_attention
    print(f"{'kv':5} {'attn':7} {'ctx':>5} {'ms/token':>9} {'attention ms':>13} {'us/layer':>9}")
    for kv_type in kv_types:
        for flash in flashes:
            m = Model(path, n_ctx=2048, kv_type=kv_type, flash_attn=flash)
            m.forward(text_ids[:8], 0)
            for ctx in (128, 1024, 2000):
                m.reset()
                for s in range(0, ctx, 256):
                    m.forward(text_ids[s:min(ctx, s + 256)], s)
                best, best_att = float("inf"), 0.0
                for i in range(repeat):
                    m.cache.truncate(ctx)
                    spent[0] = 0.0
                    t = CLOCK()
                    m.forward([text_ids[ctx]], ctx)
                    dt = CLOCK() - t
                    if dt < best:
                        best, best_att = dt, spent[0]
                print(f"{kv_type:5} {'flash' if flash else 'classic':7} {ctx:5} {best * 1e3:9.2f} "
                      f"{best_att * 1e3:13.2f} {best_att / m.cfg.n_layer * 1e6:9.0f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prefill", type=int, default=1, help="query rows per call (1 = decode)")
    ap.add_argument("--heads", default="9,3,64", help="n_head,n_head_kv,head_dim")
    ap.add_argument("--window", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--model", default=None, help="time decode steps of this GGUF instead")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--kv-type", default="f16,q8_0", help="with --model: KV types to time")
    ap.add_argument("--attn", choices=["flash", "classic", "both"], default="both", help="with --model")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        jit.set_threads(args.threads)
    if args.model:
        print(f"{args.model}, threads {jit.get_threads()}")
        return bench_model(args.model, min(args.repeat, 20), args.kv_type.split(","),
                           {"flash": (True,), "classic": (False,), "both": (True, False)}[args.attn])
    H, Hkv, D = map(int, args.heads.split(","))
    T = args.prefill
    rng = np.random.default_rng(0)
    print(f"H {H}, Hkv {Hkv}, D {D}, T {T}, window {args.window or '-'}, threads {jit.get_threads()}, "
          f"numba {jit.HAVE_NUMBA}")
    print(f"{'kv':5} {'n_kv':>5} {'flash us':>9} {'classic us':>10} {'store us':>9}  {'flash GB/s':>10}")
    for kv_type in ("f32", "f16", "q8_0", "q4_0"):
        for n_kv in (128, 1024, 2048):
            cache = KVCache(1, Hkv, D, D, n_kv, kv_type, windows=[args.window or None], n_batch=max(T, 256))
            k = rng.standard_normal((n_kv, Hkv, D)).astype(np.float32)
            v = rng.standard_normal((n_kv, Hkv, D)).astype(np.float32)
            for s in range(0, n_kv - T, 256):
                e = min(n_kv - T, s + 256)
                cache.store(0, s, k[s:e], v[s:e])
            pos = n_kv - T
            q = rng.standard_normal((T, H, D)).astype(np.float32)
            t_store = best_us(lambda: cache.store(0, pos, k[pos:], v[pos:]), args.repeat)
            view = cache.view(0, n_kv)
            for flash in (True, False):   # compile / warm
                attention(q, view, pos, 0.125, args.window, flash)
            t_flash = best_us(lambda: attention(q, view, pos, 0.125, args.window, True), args.repeat)
            t_classic = best_us(lambda: attention(q, view, pos, 0.125, args.window, False), args.repeat)
            n_read = min(n_kv, args.window + T) if args.window else n_kv
            gbs = n_read * Hkv * (view.k.shape[2] + view.v.shape[2]) / (t_flash * 1e-6) / 1e9
            print(f"{kv_type:5} {n_kv:5} {t_flash:9.1f} {t_classic:10.1f} {t_store:9.1f}  {gbs:10.2f}")


if __name__ == "__main__":
    main()

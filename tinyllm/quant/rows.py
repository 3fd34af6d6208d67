"""The row drivers: y = W x for any block format, given that format's few inner functions.

Every format module (q8_0, q4, q5, kquants, iq4) hands these drivers its own pieces and
gets back a kernel of its own (a numba function with nothing but arrays in its
signature, so it is cached on disk and compiled only for the formats a model holds):

    decode  (one token):  matvec_rows(dot4, prepare, ...)   x prepared once, then four
                          weight rows at a time dotted straight from the file's bytes
    prefill (T tokens):   prefill_rows(unpack_row, ...)     TILE rows unpacked to float32
                          in L1, then dotted with every token

Read `matvec_q8_0_reference` first: it is the whole of int8 decode in plain Python, for
the simplest format.  The kernels compute the same sum, only faster.
"""

from __future__ import annotations

import numpy as np

from ..jit import FASTMATH, njit, prange
from .activations import QK, QK_K, quantize_q8_0, quantize_q8_1, quantize_q8_K, round_away_np


# ---- int8 decode, the plain way (llama2.c's runq.c matmul, over a GGUF Q8_0 matrix) -----------
def matvec_q8_0_reference(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y (R,) = W (R, n) . x (n,) for W's Q8_0 bytes (R, n/32 * 34): x is rounded to int8
    per block of 32 (scale d_x = max|x| / 127), then each block's dot product is an
    integer one, scaled once by both blocks' scales:

        y_r = sum_b  d_w[r, b] d_x[b]  sum_k  q_w[r, b, k] q_x[b, k]

    The Q8_0 block (34 bytes) is  d f16 | q[32] int8  (drawn in q8_0.py)."""
    n = x.shape[0]
    q_x, d_x = np.zeros(n, np.int32), np.zeros(n // QK, np.float32)
    for b in range(n // QK):                        # round x: Q8_0 activations
        amax = np.abs(x[b * QK:(b + 1) * QK]).max()
        d = np.float32(amax / np.float32(127))
        d_x[b] = np.float16(d)                      # the scale is stored as f16
        inv_d = np.float32(1) / d if d else np.float32(0)
        q_x[b * QK:(b + 1) * QK] = round_away_np(x[b * QK:(b + 1) * QK] * inv_d)  # C roundf
    y = np.zeros(w.shape[0], np.float32)
    for r in range(w.shape[0]):
        for b in range(n // QK):
            block = w[r, 34 * b:34 * (b + 1)]
            d_w = block[:2].view(np.float16)[0]
            q_w = block[2:].view(np.int8).astype(np.int32)
            y[r] += np.float32(d_w) * d_x[b] * np.float32(q_w @ q_x[b * QK:(b + 1) * QK])
    return y


# ---- decode: four rows at a time, straight from the bytes --------------------------------------
# Which four rows share a call matters more than anything inside the dot product.
# Four *adjacent* rows make the loads hop between four spots a row apart inside the
# same 4 KiB page, a pattern the hardware prefetchers do not follow: out of cache a
# Q8_0 matvec then ran at 5.6 GB/s on one core.  Rows g, g+Q, g+2Q, g+3Q (Q = R/4)
# are four plain sequential streams, which the prefetchers do follow: 12.3 GB/s on
# one core, 21.7 GB/s on two (Gemma 3's 178 MB output matrix; scripts/bench_kernels.py).
@njit(inline="always")
def matvec_rows(dot4, prepare, w, x, y, lut):
    """y (R,) = W (R, row_bytes) . x (n,).  prepare(x) -> xr, what the format's
    dot4(w0, w1, w2, w3, xr, lut) -> four dot products needs of x (its int8 rounding and
    block sums, or x with its block sums).  Inlined into each format's kernel."""
    xr = prepare(x)
    n_rows = w.shape[0]
    Q = n_rows // 4                    # rows [0, 4Q) in four strided streams
    tail = n_rows - 4 * Q              # 0..3 rows left at the end
    for g in prange(Q + (tail > 0)):
        if g < Q:
            a0, a1, a2, a3 = dot4(w[g], w[g + Q], w[g + 2 * Q], w[g + 3 * Q], xr, lut)
            y[g], y[g + Q], y[g + 2 * Q], y[g + 3 * Q] = a0, a1, a2, a3
        else:                          # the tail: repeat its last row, drop the extra results
            r, last = 4 * Q, n_rows - 1
            a0, a1, a2, a3 = dot4(w[r], w[min(r + 1, last)], w[min(r + 2, last)], w[last], xr, lut)
            y[r] = a0
            if tail > 1:
                y[r + 1] = a1
            if tail > 2:
                y[r + 2] = a2


@njit
def x_with_sums(x):
    """(x, its sums per block of 32): what the float decode kernels take (the sums carry
    the codes' bias and the mins: sum_k (d q_k + m) x_k = d q.x + m sum x)."""
    nb = x.shape[0] // QK
    xsum = np.empty(nb, np.float32)
    for b in range(nb):
        s = np.float32(0.0)
        for k in range(QK * b, QK * b + QK):
            s += x[k]
        xsum[b] = s
    return x, xsum


# ---- prefill: unpack TILE rows to float32, dot them with every token -----------------------------
# For a tile of TILE weight rows, prefill_rows
#
#   1. unpacks the rows (the format's `unpack_row`) into wf (TILE, n) float32 weights,
#      exactly the values dequantize() gives, which stay in L1 cache (and gm (TILE, n/32),
#      the offsets m of Q4_1/Q5_1), then
#   2. dots those rows with every token's activations (dot_tile):
#
#          y[t, r] = sum_k wf[r, k] xa[t, k]  +  sum_b gm[r, b] s_x[t, b]
#
#      where xa is x as it is, or x rounded the way llama.cpp rounds it for this weight
#      type (xa = d_x q_x: Q8_0 / Q8_1 / Q8_K, see activations.py), and s_x is x's
#      per-block sum (Q8_1's s = f16(d_x sum q_x) when rounded).
#
# llama.cpp forms the rounded sum from integer products; here each product is rounded
# instead, which moves the result by float32 rounding (~1e-7 relative), far below the
# rounding of x itself; the Q8_1 term keeps llama.cpp's f16 s, which is *not* float noise.
# In exchange the dot is one long loop of fused multiply-adds, the same for all formats,
# and each unpacked tile serves all T tokens: the weights are read once per matmul.
#
# How it is shaped for numba/LLVM (checked with inspect_asm, see scripts/bench_kernels.py):
#   * dot_tile accumulates in scalars, which LLVM vectorizes as a reduction held in SIMD
#     registers (an accumulator *array* would live in memory);
#   * four rows per call give four independent accumulator chains sharing each load of x;
#   * unpack_row's inner trip counts come from array shapes at run time (16 or 32 is
#     only known when called).  With a compile-time constant LLVM unrolls the inner loop
#     and vectorizes the *block* loop with byte gathers (vpinsrb, vgather), ~5x slower;
#   * per-row work lives in functions of its own, not inline in the prange body.
TILE = 4          # weight rows unpacked and dotted together
MAX_CHUNKS = 32   # work items per parallel call (a few per thread: balances a busy machine)

# How x is rounded before the dot, as quantize_act's `kind` (QuantFormat.act_kind)
ACT_Q8_0, ACT_Q8_1, ACT_Q8_K = 0, 1, 2   # llama.cpp's vec_dot types
ACT_EXACT = 3            # x as it is (float32)
ACT_EXACT_SUMS = 4       # x as it is, plus its per-32 block sums (the m terms of Q4_1/Q5_1)
ACT_OWN_TYPE = 5         # F16/BF16 weights: x rounded to half / bfloat16, as llama.cpp does


@njit
def quantize_act(kind, x):
    """x (T, n) -> xa (T, n) = d_x q_x (or x itself), and s_x (T, n/32) where kind has sums."""
    T, n = x.shape
    if kind == ACT_EXACT:
        return x, np.empty((T, 0), np.float32)
    if kind == ACT_EXACT_SUMS:
        xs4 = np.empty((T, n // QK), np.float32)
        for t in range(T):
            xs4[t] = x_with_sums(x[t])[1]
        return x, xs4
    xa = np.empty((T, n), np.float32)
    xs = np.empty((T, n // QK if kind == ACT_Q8_1 else 0), np.float32)
    per = QK_K if kind == ACT_Q8_K else QK
    xd = np.empty(n // per, np.float32)
    bsum = np.empty(n // 16, np.float32)
    for t in range(T):
        if kind == ACT_Q8_0:
            quantize_q8_0(x[t], xa[t], xd)
        elif kind == ACT_Q8_1:
            quantize_q8_1(x[t], xa[t], xd, xs[t])
        else:
            quantize_q8_K(x[t], xa[t], xd, bsum)
        for b in range(n // per):
            for k in range(b * per, b * per + per):
                xa[t, k] *= xd[b]
    return xa, xs


@njit(fastmath=FASTMATH, inline="never")
def dot_tile(wf, gm, xa, xs, y, r):
    """y[r + i] = wf[i] . xa + gm[i] . xs, for the rows that exist (r + i < len(y))."""
    w0, w1, w2, w3 = wf[0], wf[1], wf[2], wf[3]
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for k in range(xa.shape[0]):
        x = xa[k]
        a0 += w0[k] * x
        a1 += w1[k] * x
        a2 += w2[k] * x
        a3 += w3[k] * x
    for b in range(xs.shape[0]):
        a0 += gm[0, b] * xs[b]
        a1 += gm[1, b] * xs[b]
        a2 += gm[2, b] * xs[b]
        a3 += gm[3, b] * xs[b]
    n = y.shape[0] - r
    y[r] = a0
    if n > 1:
        y[r + 1] = a1
    if n > 2:
        y[r + 2] = a2
    if n > 3:
        y[r + 3] = a3


@njit(inline="always")
def prefill_rows(unpack_row, w, x, y, act, lut, aux):
    """y (T, R) = x (T, n) @ W^T for W (R, row_bytes): unpack_row(row, wf, gm, lut, aux)
    writes one row's float32 weights.  Inlined into each format's kernel."""
    xa, xs = quantize_act(act, x)
    n_rows, n_cols = w.shape[0], x.shape[1]
    n_tiles = (n_rows + TILE - 1) // TILE
    nc = min(n_tiles, MAX_CHUNKS)
    for c in prange(nc):
        wf = np.empty((TILE, n_cols), np.float32)
        gm = np.zeros((TILE, xs.shape[1]), np.float32)
        for tile in range(c * n_tiles // nc, (c + 1) * n_tiles // nc):
            r = tile * TILE
            for i in range(TILE):   # past the last row: unpack it again, dot_tile skips it
                unpack_row(w[min(r + i, n_rows - 1)], wf[i], gm[i], lut, aux)
            for t in range(x.shape[0]):
                dot_tile(wf, gm, xa[t], xs[t], y[t], r)

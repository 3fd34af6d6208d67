"""The numba kernel behind every quantized linear layer:  y (T, R) = x (T, n) @ W^T.

One driver serves all block formats.  For a tile of TILE weight rows it

  1. unpacks the rows (format-specific: `unpack_row` in each format's module) into
     wf (TILE, n) float32 weights, exactly the values dequantize() gives, which stay in
     L1 cache (and gm (TILE, n/32), the offsets m of Q4_1/Q5_1), then
  2. dots those rows with every token's rounded activations (dot_tile):

         y[t, r] = sum_k wf[r, k] xa[t, k]  +  sum_b gm[r, b] s_x[t, b]

     where xa = d_x * q_x is x rounded the way llama.cpp rounds it for this weight type
     (Q8_0 / Q8_1 / Q8_K, see activations.py) and s_x = f16(d_x * sum q_x) is Q8_1's
     per-block sum.

llama.cpp forms the same sum from integer products: per SIMD lane it adds 4-8 products
q_w q_x exactly and scales each lane by d_w d_x.  Here each product is rounded instead,
which moves the result by float32 rounding (~1e-7 relative), far below the rounding of
x itself; the Q8_1 term keeps llama.cpp's f16 s, which is *not* float noise.  In exchange
the dot is one long loop of fused multiply-adds with no per-block horizontal sums, the
same for all formats.  In prefill each unpacked tile serves all T tokens, so the weights
are read from memory once per matmul.  Decode (T = 1) of Q8_0, Q4_0, Q4_1, Q5_0, Q4_K and
Q6_K takes decode_q8.py instead (decode.py with TINYLLM_ACTIVATIONS=exact), which skips
the unpacking; the other formats decode here.

How it is shaped for numba/LLVM (checked with inspect_asm, see scripts/bench_kernels.py):
  * dot_tile accumulates in scalars, which LLVM vectorizes as a reduction held in SIMD
    registers (an accumulator *array* would live in memory);
  * four rows per call give four independent accumulator chains sharing each load of x;
  * unpack_row's inner trip counts come from array shapes at run time (16 or 32 is
    only known when called).  With a compile-time constant LLVM unrolls the inner loop
    and vectorizes the *block* loop with byte gathers (vpinsrb, vgather), ~5x slower;
  * per-row work lives in functions of its own, not inline in the prange body.
"""

from __future__ import annotations

import numpy as np

from ..jit import FASTMATH, njit, prange
from .activations import QK, QK_K, quantize_q8_0, quantize_q8_1, quantize_q8_K
from . import q8_0, q4, q5, kquants, iq4

TILE = 4          # weight rows unpacked and dotted together
MAX_CHUNKS = 32   # work items per parallel call (a few per thread: balances a busy machine)


# ---- activations: x (T, n) -> xa (T, n) = d_x q_x, and Q8_1's s_x (T, n/32) -------------------
@njit
def quantize_act(kind, x):
    """kind (common.ACT_KINDS): 0 Q8_0, 1 Q8_1, 2 Q8_K; 3 x unchanged; 4 x unchanged
    plus its per-32 sums (for the m of Q4_1/Q5_1: sum_k (d q_k + m) x_k = d q.x + m sum x)."""
    T, n = x.shape
    if kind == 3:
        return x, np.empty((T, 0), np.float32)
    if kind == 4:
        xs4 = np.empty((T, n // QK), np.float32)
        for t in range(T):
            for b in range(n // QK):
                s = np.float32(0.0)
                for k in range(b * QK, b * QK + QK):
                    s += x[t, k]
                xs4[t, b] = s
        return x, xs4
    xa = np.empty((T, n), np.float32)
    xs = np.empty((T, n // QK if kind == 1 else 0), np.float32)
    per = QK_K if kind == 2 else QK
    xd = np.empty(n // per, np.float32)
    bsum = np.empty(n // 16, np.float32)
    for t in range(T):
        if kind == 0:
            quantize_q8_0(x[t], xa[t], xd)
        elif kind == 1:
            quantize_q8_1(x[t], xa[t], xd, xs[t])
        else:
            quantize_q8_K(x[t], xa[t], xd, bsum)
        for b in range(n // per):
            for k in range(b * per, b * per + per):
                xa[t, k] *= xd[b]
    return xa, xs


# ---- the dot of TILE unpacked rows with one token -------------------------------------------
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


@njit
def unpack_any(fmt, row, wf, gm, lut, aux):
    """Dispatch on the ggml type id (a branch per row: predictable, and negligible)."""
    if fmt == 8:
        q8_0.unpack_row(row, wf, gm, lut, aux)
    elif fmt == 2:
        q4.unpack_row_q4_0(row, wf, gm, lut, aux)
    elif fmt == 3:
        q4.unpack_row_q4_1(row, wf, gm, lut, aux)
    elif fmt == 6:
        q5.unpack_row_q5_0(row, wf, gm, lut, aux)
    elif fmt == 7:
        q5.unpack_row_q5_1(row, wf, gm, lut, aux)
    elif fmt == 10:
        kquants.unpack_row_q2_K(row, wf, gm, lut, aux)
    elif fmt == 11:
        kquants.unpack_row_q3_K(row, wf, gm, lut, aux)
    elif fmt == 12:
        kquants.unpack_row_q4_K(row, wf, gm, lut, aux)
    elif fmt == 13:
        kquants.unpack_row_q5_K(row, wf, gm, lut, aux)
    elif fmt == 14:
        kquants.unpack_row_q6_K(row, wf, gm, lut, aux)
    elif fmt == 20:
        iq4.unpack_row_iq4_nl(row, wf, gm, lut, aux)
    elif fmt == 23:
        iq4.unpack_row_iq4_xs(row, wf, gm, lut, aux)


@njit(parallel=True)
def linear_blocks(w, x, y, fmt, act, lut, aux):
    """y (T, R) = x (T, n) @ W^T for W (R, row_bytes) in block format `fmt` (ggml type id)."""
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
                unpack_any(fmt, w[min(r + i, n_rows - 1)], wf[i], gm[i], lut, aux)
            for t in range(x.shape[0]):
                dot_tile(wf, gm, xa[t], xs[t], y[t], r)

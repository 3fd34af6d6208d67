"""Q8_0: 8-bit weights, one f16 scale per 32.

    block (34 bytes):  d f16 | qs[32] int8            w[i] = d * qs[i]

Activations are Q8_0 too, so a block's dot product is d_w * d_x * sum_i qs_w[i] qs_x[i].
"""

from __future__ import annotations

import numpy as np

from ..jit import FASTMATH, njit, prange
from .activations import linear_q8_0_act, quantize_q8_0
from .common import QuantFormat, f16_at, f16_field, n_chunks, row_chunks
from .matmul import chunk_rows, quantize_rows_q8_0

BLOCK, SIZE = 32, 34


def dequantize_blocks(blocks):
    """(n, 34) uint8 -> (n, 32) float32, bit-exact with gguf."""
    return blocks[:, 2:].view(np.int8).astype(np.float32) * f16_field(blocks, 0)[:, None]


def unpack(raw):
    """(R, row_bytes) -> q (R, nb, 32) float32 integers, d (R, nb)."""
    b = raw.reshape(-1, SIZE)
    q = b[:, 2:].view(np.int8).astype(np.float32).reshape(raw.shape[0], -1, BLOCK)
    return q, f16_field(b, 0).reshape(raw.shape[0], -1)


def linear_np(raw, x):
    n_cols = raw.shape[1] // SIZE * BLOCK
    return linear_q8_0_act(unpack, raw, x, row_chunks(raw.shape[0], n_cols, x.shape[0]))


# ---- numba -----------------------------------------------------------------------------------
@njit(fastmath=FASTMATH)
def dot_q8_0(row, xq, xd, lut, acc):
    """One weight row . x.  acc: 32 float32 lanes of scratch.

    Per lane k we add (d_w d_x) * (q_w[k] q_x[k]): the integer products are exact in
    float32, and keeping 32 lanes (instead of summing each block's 32 products first)
    lets LLVM map the loop onto SIMD registers."""
    acc[:] = 0.0
    for b in range(xd.shape[0]):
        o = b * SIZE
        s = f16_at(row, o, lut) * xd[b]
        for k in range(BLOCK):
            q = np.float32(np.int8(row[o + 2 + k]))
            acc[k] += s * (q * xq[b * BLOCK + k])
    return acc.sum()


@njit(parallel=True)
def matvec(w, x, y, lut):
    """y (R,) = W (R, n) . x (n,)"""
    n_rows = w.shape[0]
    xq = np.empty(x.shape[0], np.float32)
    xd = np.empty(x.shape[0] // BLOCK, np.float32)
    quantize_q8_0(x, xq, xd)
    nc = n_chunks(n_rows)
    for c in prange(nc):
        acc = np.empty(BLOCK, np.float32)
        for r in chunk_rows(c, nc, n_rows):
            y[r] = dot_q8_0(w[r], xq, xd, lut, acc)


@njit(parallel=True)
def matmul(w, x, y, lut):
    """y (T, R) = x (T, n) . W^T"""
    n_rows = w.shape[0]
    xq, xd = quantize_rows_q8_0(x)
    nc = n_chunks(n_rows)
    for c in prange(nc):
        acc = np.empty(BLOCK, np.float32)
        for r in chunk_rows(c, nc, n_rows):
            for t in range(x.shape[0]):
                y[t, r] = dot_q8_0(w[r], xq[t], xd[t], lut, acc)


FORMATS = [QuantFormat("Q8_0", 8, BLOCK, SIZE, "q8_0", dequantize_blocks, linear_np, matvec, matmul)]

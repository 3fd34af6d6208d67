"""Shared pieces of the numba drivers: activation quantization for T tokens, row chunks.

Every format's kernels have the same shape:

    matvec(w, x, y, lut):  quantize x once, then rows split over threads (prange);
                           each row is one call of the format's dot_<type>(row, ...).
    matmul(w, x, y, lut):  the same for T tokens: for each weight row, dot it with every
                           token's activations while its bytes are still in L1 cache, so
                           the weights stream from memory once per matmul, not T times.

The per-row dot is its own function (not inlined into the prange body): LLVM
vectorizes it as a small self-contained loop nest, which it does not do for the
same code inside the parallel loop.
"""

from __future__ import annotations

import numpy as np

from ..jit import njit
from .activations import QK, QK_K, quantize_q8_0, quantize_q8_1, quantize_q8_K


@njit
def quantize_rows_q8_0(x):
    xq = np.empty(x.shape, np.float32)
    xd = np.empty((x.shape[0], x.shape[1] // QK), np.float32)
    for t in range(x.shape[0]):
        quantize_q8_0(x[t], xq[t], xd[t])
    return xq, xd


@njit
def quantize_rows_q8_1(x):
    xq = np.empty(x.shape, np.float32)
    xd = np.empty((x.shape[0], x.shape[1] // QK), np.float32)
    xs = np.empty((x.shape[0], x.shape[1] // QK), np.float32)
    for t in range(x.shape[0]):
        quantize_q8_1(x[t], xq[t], xd[t], xs[t])
    return xq, xd, xs


@njit
def quantize_rows_q8_K(x):
    xq = np.empty(x.shape, np.float32)
    xd = np.empty((x.shape[0], x.shape[1] // QK_K), np.float32)
    xbsum = np.empty((x.shape[0], x.shape[1] // 16), np.float32)
    for t in range(x.shape[0]):
        quantize_q8_K(x[t], xq[t], xd[t], xbsum[t])
    return xq, xd, xbsum


@njit(inline="always")
def chunk_rows(c, nc, n_rows):
    """Row range of chunk c of nc."""
    return range(c * n_rows // nc, (c + 1) * n_rows // nc)

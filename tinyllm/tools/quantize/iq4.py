"""IQ4_NL: float32 blocks of 32 -> d f16 | qs[16], w = d * KVALUES[q] (layout in tinyllm/quant/iq4.py).

llama.cpp's model quantizer runs quantize_iq4_nl (ggml-quants.c) -> quantize_row_iq4_nl_impl
with ntry = 7 and, without an importance matrix, weights w_i = x_i^2; that is the path
re-implemented here (quantize_row_iq4_nl_ref is the same with ntry = -1: no search).
llama.cpp falls back to IQ4_NL for Q2_K/Q3_K tensors whose rows are not a multiple of 256.
"""

from __future__ import annotations

import numpy as np

from .blocks import F32, f16_bytes, inverse, pack_nibbles, signed_absmax
from .kquants import GROUP_MAX_EPS

NTRY = 7
# The 16 levels, as in tinyllm/quant/iq4.py (not imported from there: tinyllm.quant pulls in
# numba, and this package must stay cheap to import for the CLI).
KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                   dtype=np.float32)

# Level i wins once 2x reaches KVALUES[i-1] + KVALUES[i] (twice the midpoint; ties go up).
# Those sums are integers, so  2x >= m  <=>  floor(2x) >= m, and the index is a table
# lookup on floor(2x): LEVEL_AT[k - LO] = number of midpoints <= k.
_MID2 = (KVALUES[:-1] + KVALUES[1:]).astype(np.int64)
_LO, _HI = int(_MID2[0]) - 1, int(_MID2[-1])
LEVEL_AT = np.searchsorted(_MID2, np.arange(_LO, _HI + 1), side="right").astype(np.uint8)
VALUE_AT = KVALUES[LEVEL_AT]


def level_slot(v):
    """ggml's best_index_int8 as a row of LEVEL_AT: v (any shape) -> int index into it.
    (NaN -> slot 0 -> level 0, as ggml's comparisons do; +-inf -> the end levels.)"""
    t = v + v
    np.floor(t, out=t)
    t -= F32(_LO)
    np.clip(t, 0, _HI - _LO, out=t)
    return t.astype(np.intp)


def best_index(v):
    """The index of the KVALUES level nearest to v."""
    return LEVEL_AT.take(level_slot(v), mode="clip")


def quantize_iq4_nl(x):
    """One scale per block of 32.  Minimises  sum_i w_i (x_i - d K[l_i])^2,  w_i = x_i^2, over
    d and the levels l.  For fixed l the best d is sum w K x / sum w K^2, and a candidate is
    better when (sum w K x)^2 / sum w K^2 is larger.  Candidates: l = nearest level to
    x * id with id = -127/m (the extreme weight m on the extreme level) and with
    id = (k - 127) / m, k = -7..7.  The stored levels are then re-picked for the chosen d."""
    xc = np.ascontiguousarray(x.T)                      # (32, n): a block per column
    w = xc * xc
    m = signed_absmax(xc, axis=0)
    k0 = F32(KVALUES[0])

    wK, tmp = np.empty_like(xc), np.empty_like(xc)

    def candidate(iscale):
        K = VALUE_AT.take(level_slot(iscale * xc), mode="clip")      # K[l_i], the levels
        np.multiply(w, K, out=wK)
        sumqx = np.add.reduce(np.multiply(wK, xc, out=tmp), axis=0)
        sumq2 = np.add.reduce(np.multiply(wK, K, out=tmp), axis=0)
        return sumqx, sumq2

    sumqx, sumq2 = candidate(F32(1) / (-m / k0))
    d = np.where(sumq2 > 0, sumqx / sumq2, F32(0))
    best = d * sumqx
    for k in range(-NTRY, NTRY + 1):
        sumqx, sumq2 = candidate((F32(k) + k0) / m)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = np.where(better, sumqx / sumq2, d)
        best = np.where(better, d * sumqx, best)
    d = np.where(np.abs(m) < GROUP_MAX_EPS, F32(0), d)
    L = best_index(inverse(d) * xc).T
    return np.concatenate([f16_bytes(d), pack_nibbles(L)], axis=1)

"""Decode (one token) matvecs that never write the dequantized weights anywhere.

In decode every weight byte is used once, so the matvec is a race against memory
bandwidth; unpacking rows into a float buffer first (kernels.linear_blocks, the
prefill path) costs a store and a reload per weight.  Here each block's integer
codes are multiplied by x straight from the file's bytes:

    y_r = sum_b d_rb * sum_k q_rbk x_bk   (+ m_rb * sum_k x_bk   for Q4_1)
                                           (- c d_rb sum_k x_bk    for Q4_0 c=8, Q5_0 c=16)

The offset of Q4_0/Q5_0 (their codes are stored biased by 8 / 16) and the min of
Q4_1 both multiply the plain sum of x over the block, computed once per matvec.

Shaped for LLVM (see scripts/bench_kernels.py and `inspect_asm`):
  * four rows per call share every load of x;
  * the bytes-per-block count `hb` arrives at run time: with a compile-time 16 LLVM
    unrolls the inner loop and vectorizes the *block* loop with byte gathers;
  * the per-block sum s is a scalar, which LLVM turns into a vector reduction.
Formats: Q8_0, Q4_0, Q4_1, Q5_0 (SmolLM2 and Gemma 3 use these for most bytes);
the others take kernels.linear_blocks.
"""

from __future__ import annotations

import numpy as np

from ..jit import FASTMATH, njit, prange


@njit(inline="always")
def _f16(row, o, lut):
    return lut[np.int32(row[o]) | (np.int32(row[o + 1]) << 8)]


# numba types integer arithmetic as int64, so `q & 15` on a byte becomes a 64-bit
# lane in LLVM's vectors (8 per AVX-512 register, and a slow int64 -> float
# conversion).  Casting the result back to uint8 lets LLVM narrow the whole chain to
# bytes: 16 codes per 128 bits, converted to float 16 at a time.  Measured: 4.1 ->
# 7.5 GB/s on one core for Q4_1.
@njit(inline="always")
def lo(q):
    """low nibble of a byte, as uint8"""
    return np.uint8(q & 15)


@njit(inline="always")
def hi(q):
    """high nibble of a byte, as uint8"""
    return np.uint8(q >> 4)


# Q8_0 block (34 bytes): d f16 | q[32] int8                       w = d * q
@njit(fastmath=FASTMATH, inline="never")
def dot4_q8_0(w0, w1, w2, w3, x, xsum, lut, hb):
    a0 = a1 = a2 = a3 = np.float32(0.0)
    n = 2 * hb                                     # 32 codes per block
    for b in range(x.shape[0] // n):
        o, xo = b * (n + 2), b * n
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for k in range(n):
            xk = x[xo + k]
            s0 += np.float32(np.int8(w0[o + 2 + k])) * xk
            s1 += np.float32(np.int8(w1[o + 2 + k])) * xk
            s2 += np.float32(np.int8(w2[o + 2 + k])) * xk
            s3 += np.float32(np.int8(w3[o + 2 + k])) * xk
        a0 += _f16(w0, o, lut) * s0
        a1 += _f16(w1, o, lut) * s1
        a2 += _f16(w2, o, lut) * s2
        a3 += _f16(w3, o, lut) * s3
    return a0, a1, a2, a3


# Q4_0 block (18 bytes): d f16 | qs[16]: byte k = code k (low nibble), code k+16 (high)
#                                                                  w = d * (q - 8)
# Q4_1 block (20 bytes): d f16 | m f16 | qs[16] as Q4_0            w = d * q + m
@njit(fastmath=FASTMATH, inline="never")
def dot4_q4(w0, w1, w2, w3, x, xsum, lut, hb, has_min):
    a0 = a1 = a2 = a3 = np.float32(0.0)
    head = 4 if has_min else 2
    for b in range(xsum.shape[0]):
        o, xo = b * (hb + head), b * 2 * hb
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for k in range(hb):
            xl, xh = x[xo + k], x[xo + hb + k]
            q0, q1, q2, q3 = w0[o + head + k], w1[o + head + k], w2[o + head + k], w3[o + head + k]
            s0 += np.float32(lo(q0)) * xl + np.float32(hi(q0)) * xh
            s1 += np.float32(lo(q1)) * xl + np.float32(hi(q1)) * xh
            s2 += np.float32(lo(q2)) * xl + np.float32(hi(q2)) * xh
            s3 += np.float32(lo(q3)) * xl + np.float32(hi(q3)) * xh
        xs = xsum[b]
        if has_min:                                # + m * sum(x)
            a0 += _f16(w0, o, lut) * s0 + _f16(w0, o + 2, lut) * xs
            a1 += _f16(w1, o, lut) * s1 + _f16(w1, o + 2, lut) * xs
            a2 += _f16(w2, o, lut) * s2 + _f16(w2, o + 2, lut) * xs
            a3 += _f16(w3, o, lut) * s3 + _f16(w3, o + 2, lut) * xs
        else:                                      # d * (s - 8 sum(x))
            xs = np.float32(8.0) * xs
            a0 += _f16(w0, o, lut) * (s0 - xs)
            a1 += _f16(w1, o, lut) * (s1 - xs)
            a2 += _f16(w2, o, lut) * (s2 - xs)
            a3 += _f16(w3, o, lut) * (s3 - xs)
    return a0, a1, a2, a3


# Q5_0 block (22 bytes): d f16 | qh u32: bit k = 5th bit of code k | qs[16] as Q4_0
#                                                                  w = d * (q - 16)
@njit(inline="always")
def _qh(row, o):
    return (np.uint32(row[o + 2]) | (np.uint32(row[o + 3]) << 8) | (np.uint32(row[o + 4]) << 16)
            | (np.uint32(row[o + 5]) << 24))


@njit(fastmath=FASTMATH, inline="never")
def dot4_q5_0(w0, w1, w2, w3, x, xsum, lut, hb):
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for b in range(xsum.shape[0]):
        o, xo = b * (hb + 6), b * 2 * hb
        h0, h1, h2, h3 = _qh(w0, o), _qh(w1, o), _qh(w2, o), _qh(w3, o)
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for k in range(hb):
            xl, xh = x[xo + k], x[xo + hb + k]
            k16 = k + 16
            q0, q1, q2, q3 = w0[o + 6 + k], w1[o + 6 + k], w2[o + 6 + k], w3[o + 6 + k]
            s0 += (np.float32((q0 & 15) | (((h0 >> k) & 1) << 4)) * xl
                   + np.float32((q0 >> 4) | (((h0 >> k16) & 1) << 4)) * xh)
            s1 += (np.float32((q1 & 15) | (((h1 >> k) & 1) << 4)) * xl
                   + np.float32((q1 >> 4) | (((h1 >> k16) & 1) << 4)) * xh)
            s2 += (np.float32((q2 & 15) | (((h2 >> k) & 1) << 4)) * xl
                   + np.float32((q2 >> 4) | (((h2 >> k16) & 1) << 4)) * xh)
            s3 += (np.float32((q3 & 15) | (((h3 >> k) & 1) << 4)) * xl
                   + np.float32((q3 >> 4) | (((h3 >> k16) & 1) << 4)) * xh)
        xs = np.float32(16.0) * xsum[b]
        a0 += _f16(w0, o, lut) * (s0 - xs)
        a1 += _f16(w1, o, lut) * (s1 - xs)
        a2 += _f16(w2, o, lut) * (s2 - xs)
        a3 += _f16(w3, o, lut) * (s3 - xs)
    return a0, a1, a2, a3


@njit
def dot4(fmt, w0, w1, w2, w3, x, xsum, lut):
    if fmt == 8:
        return dot4_q8_0(w0, w1, w2, w3, x, xsum, lut, 16)
    if fmt == 2:
        return dot4_q4(w0, w1, w2, w3, x, xsum, lut, 16, False)
    if fmt == 3:
        return dot4_q4(w0, w1, w2, w3, x, xsum, lut, 16, True)
    return dot4_q5_0(w0, w1, w2, w3, x, xsum, lut, 16)


FUSED_TYPES = (8, 2, 3, 6)   # ggml type ids: Q8_0, Q4_0, Q4_1, Q5_0


# Which four rows share a call matters more than anything inside the dot product.
# Four *adjacent* rows make the loads hop between four spots a row apart inside the
# same 4 KiB page, a pattern the hardware prefetchers do not follow: out of cache a
# Q8_0 matvec then ran at 5.6 GB/s on one core.  Rows g, g+Q, g+2Q, g+3Q (Q = R/4)
# are four plain sequential streams, which the prefetchers do follow: 12.3 GB/s on
# one core, 21.7 GB/s on two (Gemma 3's 178 MB output matrix; scripts/bench_kernels.py).
@njit(parallel=True)
def matvec(w, x, y, fmt, lut):
    """y (R,) = W (R, row_bytes) . x (n,), W in a FUSED_TYPES format; x used as it is."""
    nb = x.shape[0] // 32
    xsum = np.empty(nb, np.float32)
    for b in range(nb):
        s = np.float32(0.0)
        for k in range(32 * b, 32 * b + 32):
            s += x[k]
        xsum[b] = s
    n_rows = w.shape[0]
    Q = n_rows // 4                    # rows [0, 4Q) in four strided streams
    tail = n_rows - 4 * Q              # 0..3 rows left at the end
    for g in prange(Q + (tail > 0)):
        if g < Q:
            a0, a1, a2, a3 = dot4(fmt, w[g], w[g + Q], w[g + 2 * Q], w[g + 3 * Q], x, xsum, lut)
            y[g], y[g + Q], y[g + 2 * Q], y[g + 3 * Q] = a0, a1, a2, a3
        else:                          # the tail: repeat its last row, drop the extra results
            r, last = 4 * Q, n_rows - 1
            a0, a1, a2, a3 = dot4(fmt, w[r], w[min(r + 1, last)], w[min(r + 2, last)], w[last], x, xsum, lut)
            y[r] = a0
            if tail > 1:
                y[r + 1] = a1
            if tail > 2:
                y[r + 2] = a2

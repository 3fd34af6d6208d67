"""Decode (one token) matvecs that never write the dequantized weights anywhere, with
activations as they are (float32): the decode path of TINYLLM_ACTIVATIONS=exact.  The
default decode path, with llama.cpp's 8-bit activations, is decode_q8.py.

In decode every weight byte is used once, so the matvec is a race against memory
bandwidth; unpacking rows into a float buffer first (kernels.linear_blocks, the
prefill path) costs a store and a reload per weight.  Here each block's integer
codes are multiplied by x straight from the file's bytes:

    y_r = sum_b d_rb * sum_k q_rbk x_bk   (+ m_rb * sum_k x_bk   for Q4_1)
                                           (- c d_rb sum_k x_bk    for Q4_0 c=8, Q5_0 c=16)

The offset of Q4_0/Q5_0 (their codes are stored biased by 8 / 16) and the min of
Q4_1 (and Q4_K's per-sub-block min) multiply the plain sum of x over the block,
computed once per matvec.

Shaped for LLVM and the memory system (see scripts/bench_kernels.py and `inspect_asm`):
  * four rows per call share every load of x, and they are rows R/4 apart (matvec);
  * the bytes-per-block count `hb` arrives at run time: with a compile-time 16 LLVM
    unrolls the inner loop and vectorizes the *block* loop with byte gathers;
  * the per-block sum s is a scalar, which LLVM turns into a vector reduction.
  * codes are narrowed to uint8/int8 before the float conversion (lo, hi, q5, q6):
    numba types integer arithmetic as int64, and LLVM keeps whatever width it is given.
Formats: Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K (what the real models and the common
downloads hold); the others take kernels.linear_blocks, which unpacks a row into L1
first.
"""

from __future__ import annotations

import numpy as np

from ..jit import FASTMATH, njit, prange
from .kquants import scale_min_at


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


@njit(inline="always")
def q5(nibble, qh, k):
    """a 4-bit code with bit k of qh as its 5th bit, as uint8 (narrow, as lo/hi)"""
    return np.uint8(nibble | (((qh >> k) & 1) << 4))


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
            s0 += np.float32(q5(lo(q0), h0, k)) * xl + np.float32(q5(hi(q0), h0, k16)) * xh
            s1 += np.float32(q5(lo(q1), h1, k)) * xl + np.float32(q5(hi(q1), h1, k16)) * xh
            s2 += np.float32(q5(lo(q2), h2, k)) * xl + np.float32(q5(hi(q2), h2, k16)) * xh
            s3 += np.float32(q5(lo(q3), h3, k)) * xl + np.float32(q5(hi(q3), h3, k16)) * xh
        xs = np.float32(16.0) * xsum[b]
        a0 += _f16(w0, o, lut) * (s0 - xs)
        a1 += _f16(w1, o, lut) * (s1 - xs)
        a2 += _f16(w2, o, lut) * (s2 - xs)
        a3 += _f16(w3, o, lut) * (s3 - xs)
    return a0, a1, a2, a3


# Q4_K super-block (144 bytes, 256 weights): d f16 | dmin f16 | scales[12] | qs[128]
#   8 sub-blocks of 32, six-bit scale sc_j and min m_j each (kquants.scale_min_at);
#   qs[32p + l]: low nibble = weight 64p + l (sub-block 2p), high = 64p + 32 + l (2p+1)
#                                                   w = d sc_j q - dmin m_j
# Per sub-block the sum is  d sc_j (q . x) - dmin m_j sum(x): the same shape as Q4_1.
@njit(fastmath=FASTMATH, inline="never")
def dot4_q4_K(w0, w1, w2, w3, x, xsum, lut, hb):
    a0 = a1 = a2 = a3 = np.float32(0.0)
    n = 2 * hb                                     # 32 weights per sub-block
    for B in range(x.shape[0] // 256):
        o = B * 144
        d0, d1, d2, d3 = _f16(w0, o, lut), _f16(w1, o, lut), _f16(w2, o, lut), _f16(w3, o, lut)
        m0, m1, m2, m3 = (_f16(w0, o + 2, lut), _f16(w1, o + 2, lut), _f16(w2, o + 2, lut),
                          _f16(w3, o + 2, lut))
        for p in range(4):
            q, xo = o + 16 + n * p, B * 256 + 2 * n * p
            l0 = l1 = l2 = l3 = h0 = h1 = h2 = h3 = np.float32(0.0)
            for k in range(n):
                xl, xh = x[xo + k], x[xo + n + k]
                c0, c1, c2, c3 = w0[q + k], w1[q + k], w2[q + k], w3[q + k]
                l0 += np.float32(lo(c0)) * xl
                h0 += np.float32(hi(c0)) * xh
                l1 += np.float32(lo(c1)) * xl
                h1 += np.float32(hi(c1)) * xh
                l2 += np.float32(lo(c2)) * xl
                h2 += np.float32(hi(c2)) * xh
                l3 += np.float32(lo(c3)) * xl
                h3 += np.float32(hi(c3)) * xh
            xs_lo, xs_hi = xsum[8 * B + 2 * p], xsum[8 * B + 2 * p + 1]
            a0 += _q4_K_pair(w0, o, p, d0, m0, l0, h0, xs_lo, xs_hi)
            a1 += _q4_K_pair(w1, o, p, d1, m1, l1, h1, xs_lo, xs_hi)
            a2 += _q4_K_pair(w2, o, p, d2, m2, l2, h2, xs_lo, xs_hi)
            a3 += _q4_K_pair(w3, o, p, d3, m3, l3, h3, xs_lo, xs_hi)
    return a0, a1, a2, a3


@njit(inline="always")
def _q4_K_pair(row, o, p, d, dmin, s_lo, s_hi, xs_lo, xs_hi):
    """sub-blocks 2p and 2p+1 of one row: d sc (q . x) - dmin m sum(x), for both"""
    sc0, m0 = scale_min_at(row, o + 4, 2 * p)
    sc1, m1 = scale_min_at(row, o + 4, 2 * p + 1)
    return (d * (np.float32(sc0) * s_lo + np.float32(sc1) * s_hi)
            - dmin * (np.float32(m0) * xs_lo + np.float32(m1) * xs_hi))


# Q6_K super-block (210 bytes, 256 weights): ql[128] | qh[64] | scales[16] int8 | d f16
#   per half h (128 weights), l = 0..31:  a = ql[64h + l], b = ql[64h + 32 + l], c = qh[32h + l]
#     weight 128h + l      = (a & 15) | (c & 3) << 4        weight 128h + 64 + l = a >> 4 | (c & 48)
#     weight 128h + 32 + l = (b & 15) | (c & 12) << 2       weight 128h + 96 + l = b >> 4 | (c >> 2 & 48)
#   codes are stored +32; sub-blocks of 16 weights, scale sc_j (int8)       w = d sc_j (q - 32)
@njit(inline="always")
def q6(nibble, two_bits):
    """a 6-bit code minus its bias of 32, as int8 (narrow, as lo/hi)"""
    return np.int8(np.uint8(nibble | two_bits) - np.uint8(32))


@njit(inline="always")
def _q6_K_16(row, x, ql, qh, xo, l0, n, sc, o_d, lut):
    """One row, bytes l in [l0, l0 + n) of a half (n = 16): the four sub-blocks they
    feed, each summed as q . x and scaled by d sc_j."""
    s1 = s2 = s3 = s4 = np.float32(0.0)
    for l in range(l0, l0 + n):
        a, b, c = row[ql + l], row[ql + 32 + l], row[qh + l]
        s1 += np.float32(q6(lo(a), np.uint8((c & 3) << 4))) * x[xo + l]
        s2 += np.float32(q6(lo(b), np.uint8((c & 12) << 2))) * x[xo + 32 + l]
        s3 += np.float32(q6(hi(a), np.uint8(c & 48))) * x[xo + 64 + l]
        s4 += np.float32(q6(hi(b), np.uint8((c >> 2) & 48))) * x[xo + 96 + l]
    return _f16(row, o_d, lut) * (np.float32(np.int8(row[sc])) * s1 + np.float32(np.int8(row[sc + 2])) * s2
                                  + np.float32(np.int8(row[sc + 4])) * s3 + np.float32(np.int8(row[sc + 6])) * s4)


@njit(fastmath=FASTMATH, inline="never")
def dot4_q6_K(w0, w1, w2, w3, x, xsum, lut, hb):
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for B in range(x.shape[0] // 256):
        o = B * 210
        for h in range(2):
            ql, qh, xo = o + 64 * h, o + 128 + 32 * h, B * 256 + 128 * h
            for g in range(2):                       # bytes l in [16g, 16g + 16): sub-blocks 8h + g + {0,2,4,6}
                a0 += _q6_K_16(w0, x, ql, qh, xo, 16 * g, hb, o + 192 + 8 * h + g, o + 208, lut)
                a1 += _q6_K_16(w1, x, ql, qh, xo, 16 * g, hb, o + 192 + 8 * h + g, o + 208, lut)
                a2 += _q6_K_16(w2, x, ql, qh, xo, 16 * g, hb, o + 192 + 8 * h + g, o + 208, lut)
                a3 += _q6_K_16(w3, x, ql, qh, xo, 16 * g, hb, o + 192 + 8 * h + g, o + 208, lut)
    return a0, a1, a2, a3


@njit
def dot4(fmt, w0, w1, w2, w3, x, xsum, lut):
    if fmt == 8:
        return dot4_q8_0(w0, w1, w2, w3, x, xsum, lut, 16)
    if fmt == 2:
        return dot4_q4(w0, w1, w2, w3, x, xsum, lut, 16, False)
    if fmt == 3:
        return dot4_q4(w0, w1, w2, w3, x, xsum, lut, 16, True)
    if fmt == 12:
        return dot4_q4_K(w0, w1, w2, w3, x, xsum, lut, 16)
    if fmt == 14:
        return dot4_q6_K(w0, w1, w2, w3, x, xsum, lut, 16)
    return dot4_q5_0(w0, w1, w2, w3, x, xsum, lut, 16)


FUSED_TYPES = (8, 2, 3, 6, 12, 14)   # ggml type ids: Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K


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

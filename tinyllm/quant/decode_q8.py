"""Decode (one token) matvecs with 8-bit activations: llama.cpp's inner loop.

llama.cpp rounds x to 8 bits before every quantized dot product (activations.py
has the formats and their rounding); each block's dot product is then an integer
one.  The weights never leave their bytes either: per block of 32 weights,

    y_r = sum_b  d_w d_x  (q_w . q_x)          q_w: unsigned codes, q_x: int8

with the bias of the codes (Q4_0: 8, Q5_0: 16, Q6_K: 32) or the min (Q4_1, Q4_K)
folded in through the sum of q_x over the block, an integer known before the row:

    sum (q_w - c) q_x  =  q_w . q_x  -  c sum(q_x)

`q_w . q_x` is one or two instructions for 32 weights (simd.dot), kept as 8 int32
lanes; a k-quant's sub-block scales multiply those lanes as integers; the block (or
super-block) scale turns them into floats added to 8 float lanes that live in a
register for the whole row (simd.fma), summed once at the end (simd.hsum).

Numerics: what llama.cpp's one-token path computes (the same rounding of x, the
same integer sums), up to the order of the float additions.  It is the default
for one-token decode (TINYLLM_ACTIVATIONS, activations.py): about 2.5x faster than
the float kernels in decode.py, which remain for TINYLLM_ACTIVATIONS=exact.

Row order, threads and the four rows per call are those of decode.matvec.
"""

from __future__ import annotations

import numpy as np

from ..jit import FASTMATH, HAVE_NUMBA, njit, prange
from .activations import quantize_q8_0, quantize_q8_1, quantize_q8_K

if HAVE_NUMBA:     # without numba these kernels are never called (linear() uses the numpy oracle)
    from .simd import (add, prefetch, bytes32, dot, dot_acc, dot_scaled, dot_signed, f16_at, f16_splat, fma, fmul, splat, hsum, int8x8, lane,
                       load_i32x8, mul, nibbles16, nibbles_hi, nibbles_lo, q4_K_scales, scale_pair,
                       with_2bits, with_bit4, zeros_f32x8, zeros_i32x8)


# Each row is read once from memory, front to back.  Asking for the line AHEAD bytes
# further along every row keeps loads in flight that the hardware prefetchers, juggling
# four rows per thread, start too late: on the 1B model Q4_0 decode went from 0.73x to
# 0.82-0.84x llama.cpp (scripts/bench_speed.py --synthetic-1b).  Only Q4_0/Q5_0 ask: on
# Q4_K it did not help (0.75x with a hint per cache line of a super-block, 0.50x with one
# per super-block, 0.75-0.83x without), on Q8_0 it changed nothing.
AHEAD = 1024


@njit(inline="always")
def _ahead(w0, w1, w2, w3, o):
    prefetch(w0, o + AHEAD)
    prefetch(w1, o + AHEAD)
    prefetch(w2, o + AHEAD)
    prefetch(w3, o + AHEAD)

# Q8_0 block (34 bytes): d f16 | q[32] int8                          w = d q
@njit(fastmath=FASTMATH, inline="never")
def dot4_q8_0(w0, w1, w2, w3, xq, xd, xs):
    a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
    for b in range(xd.shape[0]):
        o, xo, d = 34 * b, 32 * b, xd[b]
        a0 = fma(a0, dot_signed(bytes32(w0, o + 2), xq, xo), f16_at(w0, o) * d)
        a1 = fma(a1, dot_signed(bytes32(w1, o + 2), xq, xo), f16_at(w1, o) * d)
        a2 = fma(a2, dot_signed(bytes32(w2, o + 2), xq, xo), f16_at(w2, o) * d)
        a3 = fma(a3, dot_signed(bytes32(w3, o + 2), xq, xo), f16_at(w3, o) * d)
    return hsum(a0), hsum(a1), hsum(a2), hsum(a3)


# Q4_0 block (18 bytes): d f16 | qs[16]: byte k = code k (low nibble), code k+16 (high)
#                                                                     w = d (q - 8)
# Q5_0 block (22 bytes): d f16 | qh u32: bit k = 5th bit of code k | qs[16] as Q4_0
#                                                                     w = d (q - 16)
# The bias c = 8 or 16 enters as the integer dot product's starting value: xi holds
# -c (q_x[4i] + .. + q_x[4i+3]) for each of its lanes, the same for every row.
@njit(fastmath=FASTMATH, inline="never")
def dot4_q4_0(w0, w1, w2, w3, xq, xd, xi, lut):
    return _dot4_q4_0_q5_0(w0, w1, w2, w3, xq, xd, xi, lut, False)


@njit(fastmath=FASTMATH, inline="never")
def dot4_q5_0(w0, w1, w2, w3, xq, xd, xi, lut):
    return _dot4_q4_0_q5_0(w0, w1, w2, w3, xq, xd, xi, lut, True)


@njit(fastmath=FASTMATH, inline="always")      # inlined: five_bits becomes a constant
def _dot4_q4_0_q5_0(w0, w1, w2, w3, xq, xd, xi, lut, five_bits):
    a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
    size, qs = (22, 6) if five_bits else (18, 2)
    for b in range(xd.shape[0]):
        o, xo, d = size * b, 32 * b, splat(xd[b])
        if five_bits:
            q0, q1 = with_bit4(nibbles16(w0, o + qs), w0, o + 2), with_bit4(nibbles16(w1, o + qs), w1, o + 2)
            q2, q3 = with_bit4(nibbles16(w2, o + qs), w2, o + 2), with_bit4(nibbles16(w3, o + qs), w3, o + 2)
        else:
            q0, q1, q2, q3 = nibbles16(w0, o + qs), nibbles16(w1, o + qs), nibbles16(w2, o + qs), nibbles16(w3, o + qs)
        bias = load_i32x8(xi, 8 * b)
        _ahead(w0, w1, w2, w3, o)
        a0 = fma(a0, dot_acc(bias, q0, xq, xo), fmul(f16_splat(w0, o, lut), d))
        a1 = fma(a1, dot_acc(bias, q1, xq, xo), fmul(f16_splat(w1, o, lut), d))
        a2 = fma(a2, dot_acc(bias, q2, xq, xo), fmul(f16_splat(w2, o, lut), d))
        a3 = fma(a3, dot_acc(bias, q3, xq, xo), fmul(f16_splat(w3, o, lut), d))
    return hsum(a0), hsum(a1), hsum(a2), hsum(a3)


# Q4_1 block (20 bytes): d f16 | m f16 | qs[16] as Q4_0                 w = d q + m
# with Q8_1 activations: xs[b] = f16(d_x sum(q_x)), so the m term is m_w xs[b].
@njit(fastmath=FASTMATH, inline="never")
def dot4_q4_1(w0, w1, w2, w3, xq, xd, xs):
    a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
    c0 = c1 = c2 = c3 = np.float32(0.0)
    for b in range(xd.shape[0]):
        o, xo, d, s = 20 * b, 32 * b, xd[b], xs[b]
        a0 = fma(a0, dot(nibbles16(w0, o + 4), xq, xo), f16_at(w0, o) * d)
        a1 = fma(a1, dot(nibbles16(w1, o + 4), xq, xo), f16_at(w1, o) * d)
        a2 = fma(a2, dot(nibbles16(w2, o + 4), xq, xo), f16_at(w2, o) * d)
        a3 = fma(a3, dot(nibbles16(w3, o + 4), xq, xo), f16_at(w3, o) * d)
        c0 += f16_at(w0, o + 2) * s
        c1 += f16_at(w1, o + 2) * s
        c2 += f16_at(w2, o + 2) * s
        c3 += f16_at(w3, o + 2) * s
    return hsum(a0) + c0, hsum(a1) + c1, hsum(a2) + c2, hsum(a3) + c3


# Q4_K super-block (144 bytes, 256 weights): d f16 | dmin f16 | scales[12] | qs[128]
#   8 sub-blocks of 32, six-bit scale sc_j and min m_j (simd.q4_K_scales);
#   qs[32p + l]: low nibble = weight 64p + l (sub-block 2p), high = 64p + 32 + l (2p+1)
#                                                     w = d sc_j q - dmin m_j
# Q8_K activations: one float d_x per 256, bs32[j] = sum of q_x over sub-block j.
#   y = d_w d_x sum_j sc_j (q_j . q_x)  -  dmin_w d_x sum_j m_j bs32[j]
@njit(inline="always")
def _q4_K_row(acc, w, o, B, xq, xd, bs32):
    sc, m = q4_K_scales(w, o + 4)
    even = odd = zeros_i32x8()          # two chains of multiply-adds: half the latency
    for p in range(4):
        q, xo = o + 16 + 32 * p, 256 * B + 64 * p
        even = dot_scaled(even, nibbles_lo(w, q), xq, xo, lane(sc, 2 * p))
        odd = dot_scaled(odd, nibbles_hi(w, q), xq, xo + 32, lane(sc, 2 * p + 1))
    d = xd[B]
    acc = fma(acc, add(even, odd), f16_at(w, o) * d)
    # the mins' lanes m_j bs32[j] go into the same float lanes, scaled by -dmin d_x
    return fma(acc, mul(m, load_i32x8(bs32, 8 * B)), -(f16_at(w, o + 2) * d))


# Q6_K super-block (210 bytes, 256 weights): ql[128] | qh[64] | scales[16] int8 | d f16
#   per half h (128 weights), l = 0..31:  a = ql[64h + l], b = ql[64h + 32 + l], c = qh[32h + l]
#     weight 128h + l      = (a & 15) | (c & 3) << 4        weight 128h + 64 + l = a >> 4 | (c >> 4 & 3) << 4
#     weight 128h + 32 + l = (b & 15) | (c >> 2 & 3) << 4   weight 128h + 96 + l = b >> 4 | (c >> 6 & 3) << 4
#   codes are stored +32; sub-block j = 16 weights, scale sc_j (int8)          w = d sc_j (q - 32)
#   y = d_w d_x (sum_j sc_j (q_j . q_x)  -  32 sum_j sc_j bs16[j])      bs16: sums of q_x per 16
@njit(inline="always")
def _q6_K_row(acc, w, o, B, xq, xd, bs16):
    lo = hi = zeros_i32x8()             # two chains of multiply-adds: half the latency
    for h in range(2):
        ql, qh, xo, sc = o + 64 * h, o + 128 + 32 * h, 256 * B + 128 * h, o + 192 + 8 * h
        # each dot covers two sub-blocks: lanes 0..3 the first 16 weights, 4..7 the next
        lo = dot_scaled(lo, with_2bits(nibbles_lo(w, ql), w, qh, 0), xq, xo, scale_pair(w, sc))
        lo = dot_scaled(lo, with_2bits(nibbles_lo(w, ql + 32), w, qh, 2), xq, xo + 32, scale_pair(w, sc + 2))
        hi = dot_scaled(hi, with_2bits(nibbles_hi(w, ql), w, qh, 4), xq, xo + 64, scale_pair(w, sc + 4))
        hi = dot_scaled(hi, with_2bits(nibbles_hi(w, ql + 32), w, qh, 6), xq, xo + 96, scale_pair(w, sc + 6))
    d = f16_at(w, o + 208) * xd[B]
    acc = fma(acc, add(lo, hi), d)
    # the bias 32 sum_j sc_j bs16[j], lane j of each half: scales 0..7, then 8..15
    bias = add(mul(int8x8(w, o + 192), load_i32x8(bs16, 16 * B)),
               mul(int8x8(w, o + 200), load_i32x8(bs16, 16 * B + 8)))
    return fma(acc, bias, np.float32(-32.0) * d)


# Four rows of Q4_K, two at a time: a super-block of each of the two rows per step, into
# 8 float lanes a row.  Four rows in one loop need more than the 32 vector registers (each
# row's scales and mins on top of the shared x), and the spilled values, stored and
# reloaded in every step, made the speed depend on where x happened to lie in memory:
# 14.6 to 18.0 GB/s on one core, by its offset in a cache line.  Two rows never spill:
# 17.3 GB/s at every offset (scripts/bench_kernels.py, 5632 x 2048).
@njit(fastmath=FASTMATH, inline="never")
def dot4_q4_K(w0, w1, w2, w3, xq, xd, bs32):
    a0, a1 = _dot2_q4_K(w0, w1, xq, xd, bs32)
    a2, a3 = _dot2_q4_K(w2, w3, xq, xd, bs32)
    return a0, a1, a2, a3


@njit(fastmath=FASTMATH, inline="always")
def _dot2_q4_K(w0, w1, xq, xd, bs32):
    a0, a1 = zeros_f32x8(), zeros_f32x8()
    for B in range(xd.shape[0]):
        o = 144 * B
        a0, a1 = _q4_K_row(a0, w0, o, B, xq, xd, bs32), _q4_K_row(a1, w1, o, B, xq, xd, bs32)
    return hsum(a0), hsum(a1)


# Q6_K's four rows fit the registers: one super-block of each row per step.
@njit(fastmath=FASTMATH, inline="never")
def dot4_q6_K(w0, w1, w2, w3, xq, xd, bs16):
    a0, a1, a2, a3 = zeros_f32x8(), zeros_f32x8(), zeros_f32x8(), zeros_f32x8()
    for B in range(xd.shape[0]):
        o = 210 * B
        a0, a1 = _q6_K_row(a0, w0, o, B, xq, xd, bs16), _q6_K_row(a1, w1, o, B, xq, xd, bs16)
        a2, a3 = _q6_K_row(a2, w2, o, B, xq, xd, bs16), _q6_K_row(a3, w3, o, B, xq, xd, bs16)
    return hsum(a0), hsum(a1), hsum(a2), hsum(a3)


@njit
def dot4(fmt, w0, w1, w2, w3, xq, xd, xs, xi, lut):
    if fmt == 8:
        return dot4_q8_0(w0, w1, w2, w3, xq, xd, xs)
    if fmt == 2:
        return dot4_q4_0(w0, w1, w2, w3, xq, xd, xi, lut)
    if fmt == 6:
        return dot4_q5_0(w0, w1, w2, w3, xq, xd, xi, lut)
    if fmt == 3:
        return dot4_q4_1(w0, w1, w2, w3, xq, xd, xs)
    if fmt == 12:
        return dot4_q4_K(w0, w1, w2, w3, xq, xd, xi)
    return dot4_q6_K(w0, w1, w2, w3, xq, xd, xi)


TYPES = (8, 2, 6, 3, 12, 14)   # ggml type ids: Q8_0, Q4_0, Q5_0, Q4_1, Q4_K, Q6_K


@njit(inline="always")
def _empty_on_a_line(n):
    """np.empty(n, np.int8), starting on a 64-byte cache line: every 32-byte load of a
    block of x then stays within one line (a load split over two lines costs Q6_K a
    quarter of its speed: 24 -> 18 GB/s on one core with x 16 bytes into a line)."""
    buf = np.empty(n + 63, np.int8)
    o = (-buf.ctypes.data) % 64
    return buf[o:o + n]


@njit
def quantize_x(fmt, x):
    """x rounded as llama.cpp's vec_dot type for fmt: xq int8 (n,), scales xd, and the sums
    of q_x that fold in biases and mins: xs (Q4_1's Q8_1: f16(d sum(q)) per 32) or xi
    (integers: Q4_0/Q5_0 -c x sums per 4, Q4_K sums per 32, Q6_K sums per 16)"""
    n = x.shape[0]
    xq = _empty_on_a_line(n)            # the quantizers write the integers straight in
    if fmt == 12 or fmt == 14:                      # Q8_K
        xd = np.empty(n // 256, np.float32)
        bs16 = np.empty(n // 16, np.int32)
        quantize_q8_K(x, xq, xd, bs16)
        if fmt == 14:
            return xq, xd, xd[:0], bs16
        bs32 = np.empty(n // 32, np.int32)
        for j in range(n // 32):
            bs32[j] = bs16[2 * j] + bs16[2 * j + 1]
        return xq, xd, xd[:0], bs32
    xd = np.empty(n // 32, np.float32)
    xs = np.empty(n // 32 if fmt == 3 else 0, np.float32)
    if fmt == 3:                                    # Q8_1
        quantize_q8_1(x, xq, xd, xs)
    else:                                           # Q8_0
        quantize_q8_0(x, xq, xd)
    c = 8 if fmt == 2 else 16 if fmt == 6 else 0
    xi = np.empty(n // 4 if c else 0, np.int32)
    for i in range(xi.shape[0]):
        xi[i] = -c * (np.int32(xq[4 * i]) + np.int32(xq[4 * i + 1]) + np.int32(xq[4 * i + 2]) + np.int32(xq[4 * i + 3]))
    return xq, xd, xs, xi


@njit(parallel=True)
def matvec(w, x, y, fmt, lut):
    """y (R,) = W (R, row_bytes) . x (n,), W in one of TYPES, x rounded to 8 bits first.
    lut: f16 -> f32 for every bit pattern (simd.f16_splat)."""
    xq, xd, xs, xi = quantize_x(fmt, x)
    n_rows = w.shape[0]
    Q = n_rows // 4                    # rows [0, 4Q) in four strided streams (decode.matvec)
    tail = n_rows - 4 * Q
    for g in prange(Q + (tail > 0)):
        if g < Q:
            a0, a1, a2, a3 = dot4(fmt, w[g], w[g + Q], w[g + 2 * Q], w[g + 3 * Q], xq, xd, xs, xi, lut)
            y[g], y[g + Q], y[g + 2 * Q], y[g + 3 * Q] = a0, a1, a2, a3
        else:
            r, last = 4 * Q, n_rows - 1
            a0, a1, a2, a3 = dot4(fmt, w[r], w[min(r + 1, last)], w[min(r + 2, last)], w[last], xq, xd, xs, xi, lut)
            y[r] = a0
            if tail > 1:
                y[r + 1] = a1
            if tail > 2:
                y[r + 2] = a2

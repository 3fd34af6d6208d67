"""Eight-lane vectors, as numba intrinsics: for the int8 kernels (the formats' dot4s,
rows._dot8x4), and the float ones for flash attention's scores and P V (attention.py)
and the KV cache's tile reader (kvcache.dequantize_cells).

Why this module exists: a one-token matvec over 4-bit weights is a race against
memory bandwidth, and winning it needs the inner loop llama.cpp has -- per block of
32 weights, 32 unsigned codes times 32 int8 activations summed by a single
multiply-add instruction (AVX2 vpmaddubsw + vpmaddwd, AVX-512 VNNI vpdpbusd), the
per-block sums kept as 8 int32 lanes, scaled and accumulated into 8 float lanes that
live in a register across the whole row.  Plain numba cannot say that: it types
integer products as int64, and LLVM vectorizes the wrong loop once accumulators
outlive a block.  Measured on one Zen 4 core, Q4_0 out of cache: 6.5 GB/s as plain
numba, 14.5 GB/s with these intrinsics; Q6_K 4.6 -> 19.

Each function below is a few LLVM instructions emitted straight into the calling
kernel; the vector values never touch memory.  The types:

    u8x32   32 unsigned bytes: one block's weight codes (0..255)
    i32x8   8 int32 lanes;  lane i = sum over bytes 4i..4i+3 of a 32-byte dot product
    f32x8   8 float32 lanes: a running sum, reduced to one number at the end of a row

Only the dot products differ by CPU (PATH names the one in use):

    vnni     x86 with AVX-512 VNNI: vpdpbusd, 32 u8*s8 products summed into 8 lanes
    avx2     x86 with AVX2: vpmaddubsw (pairs, int16) then vpmaddwd (pairs of pairs)
    dotprod  aarch64 with ARMv8.2 dot product (Pi 5, Cortex-A76): two sdot, each 16
             s8*s8 products summed by fours into 4 lanes, i.e. lanes 0..3 and 4..7
    neon     aarch64 without it (Pi 4, Cortex-A72): the plain vector IR below, which
             LLVM lowers to NEON widening multiplies and pairwise adds
    generic  anything else: the same plain vector IR

sdot multiplies signed bytes, and the codes are unsigned; every format's codes are
below 128 (at most 6 bits: Q6_K), where the two readings agree, so no udot/usdot
(i8mm, which the A76 lacks) is needed.  AVX2's vpmaddubsw relies on the same bound
to never saturate.  TINYLLM_SIMD=avx2|generic (x86) or neon|generic (aarch64) forces
a slower path, for tests; on aarch64 tinyllm/cpu.py tells numba's LLVM the matching
target features.  The lane layout is the same on every path, so kernels can rely on it.
"""

from __future__ import annotations

import os

from .. import cpu, jit

if jit.HAVE_NUMBA:
    import llvmlite.binding as _llvm
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic, models, register_model

    _FEATURES = {k for k, v in _llvm.get_host_cpu_features().items() if v}
    _FORCE = os.environ.get("TINYLLM_SIMD", "").strip().lower()    # a slower path, for tests
    X86_AVX2 = "avx2" in _FEATURES and _FORCE != "generic"
    X86_VNNI = X86_AVX2 and {"avx512vnni", "avx512vl"} <= _FEATURES and _FORCE != "avx2"
    ARM_DOTPROD = cpu.ARM_DOTPROD
    PATH = ("vnni" if X86_VNNI else "avx2" if X86_AVX2 else "dotprod" if ARM_DOTPROD
            else "neon" if cpu.AARCH64 and _FORCE != "generic" else "generic")

    I8, I16, I32, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()

    def _v(t, n):
        return ir.VectorType(t, n)

    def _splat(builder, value, n):
        v = builder.insert_element(ir.Constant(_v(value.type, n), ir.Undefined), value, ir.Constant(I32, 0))
        return builder.shuffle_vector(v, v, ir.Constant(_v(I32, n), [0] * n))

    class VectorType(types.Type):
        def __init__(self, name, lltype):
            self.lltype = lltype
            super().__init__(name=name)

    u8x32 = VectorType("u8x32", _v(I8, 32))
    i32x8 = VectorType("i32x8", _v(I32, 8))
    f32x8 = VectorType("f32x8", _v(F32, 8))

    @register_model(VectorType)
    class _VectorModel(models.PrimitiveModel):
        def __init__(self, dmm, fe_type):
            super().__init__(dmm, fe_type, fe_type.lltype)

    def _load(context, builder, arrty, arr, index, lltype):
        """an unaligned load of lltype from &arr[index]"""
        data = context.make_array(arrty)(context, builder, arr).data
        return builder.load(builder.bitcast(builder.gep(data, [index]), lltype.as_pointer()), align=1)

    def _call(builder, name, ret, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
        return builder.call(fn, args)

    # ---- reading weights ---------------------------------------------------------------
    @intrinsic
    def f16_at(typingctx, w, o):
        """float32 of the IEEE half at bytes w[o], w[o+1] (F16C vcvtph2ps / aarch64 fcvt)"""
        def codegen(context, builder, sig, args):
            return builder.fpext(_load(context, builder, sig.args[0], args[0], args[1], ir.HalfType()), F32)
        return types.float32(w, types.intp), codegen

    @intrinsic
    def f16x8_at(typingctx, w, o):
        """the 8 IEEE halves at bytes w[o : o+16] as float32 lanes (F16C vcvtph2ps / aarch64 fcvtl)"""
        def codegen(context, builder, sig, args):
            halves = _load(context, builder, sig.args[0], args[0], args[1], _v(ir.HalfType(), 8))
            return builder.fpext(halves, f32x8.lltype)
        return f32x8(w, types.intp), codegen

    @intrinsic
    def f16_splat(typingctx, w, o, lut):
        """the IEEE half at w[o], w[o+1] as float32 in all 8 lanes, through a 65536-entry
        table: one 16-bit load and one broadcast load (vbroadcastss), where F16C's
        vpinsrw + vcvtph2ps + vbroadcastss take five uops (measured: Q4_0 13 -> 17 GB/s)"""
        def codegen(context, builder, sig, args):
            bits = _load(context, builder, sig.args[0], args[0], args[1], I16)
            table = context.make_array(sig.args[2])(context, builder, args[2]).data
            v = builder.load(builder.gep(table, [builder.zext(bits, ir.IntType(64))]))
            return _splat(builder, v, 8)
        return f32x8(w, types.intp, lut), codegen

    @intrinsic
    def splat(typingctx, v):
        """v in all 8 lanes"""
        def codegen(context, builder, sig, args):
            return _splat(builder, args[0], 8)
        return f32x8(types.float32), codegen

    @intrinsic
    def fmul(typingctx, a, b):
        """a * b, lane by lane"""
        def codegen(context, builder, sig, args):
            return builder.fmul(args[0], args[1])
        return f32x8(f32x8, f32x8), codegen

    @intrinsic
    def bytes32(typingctx, w, o):
        """w[o : o+32] as they are"""
        def codegen(context, builder, sig, args):
            return _load(context, builder, sig.args[0], args[0], args[1], u8x32.lltype)
        return u8x32(w, types.intp), codegen

    @intrinsic
    def nibbles_lo(typingctx, w, o):
        """the low nibbles of w[o : o+32]"""
        def codegen(context, builder, sig, args):
            b = _load(context, builder, sig.args[0], args[0], args[1], u8x32.lltype)
            return builder.and_(b, ir.Constant(u8x32.lltype, [15] * 32))
        return u8x32(w, types.intp), codegen

    @intrinsic
    def nibbles_hi(typingctx, w, o):
        """the high nibbles of w[o : o+32]"""
        def codegen(context, builder, sig, args):
            b = _load(context, builder, sig.args[0], args[0], args[1], u8x32.lltype)
            return builder.lshr(b, ir.Constant(u8x32.lltype, [4] * 32))
        return u8x32(w, types.intp), codegen

    @intrinsic
    def nibbles16(typingctx, w, o):
        """the 16 bytes w[o : o+16] as 32 codes: the 16 low nibbles, then the 16 high
        ones (the Q4_0/Q4_1/Q5_0 layout)"""
        def codegen(context, builder, sig, args):
            b = _load(context, builder, sig.args[0], args[0], args[1], _v(I8, 16))
            if X86_AVX2:    # both halves at once: broadcast, shift the upper half's qwords by 4, mask
                bb = builder.bitcast(builder.shuffle_vector(b, b, ir.Constant(_v(I32, 32), list(range(16)) * 2)),
                                     _v(ir.IntType(64), 4))
                sh = _call(builder, "llvm.x86.avx2.psrlv.q.256", _v(ir.IntType(64), 4),
                           [bb, ir.Constant(_v(ir.IntType(64), 4), [0, 0, 4, 4])])
                return builder.and_(builder.bitcast(sh, u8x32.lltype), ir.Constant(u8x32.lltype, [15] * 32))
            lo = builder.and_(b, ir.Constant(_v(I8, 16), [15] * 16))
            hi = builder.lshr(b, ir.Constant(_v(I8, 16), [4] * 16))
            return builder.shuffle_vector(lo, hi, ir.Constant(_v(I32, 32), list(range(32))))
        return u8x32(w, types.intp), codegen

    @intrinsic
    def with_bit4(typingctx, codes, w, o):
        """codes | (bit k of the little-endian uint32 at w[o]) << 4, k = 0..31: Q5_0's
        fifth bits.  A 32-bit mask reinterpreted as 32 one-bit lanes."""
        def codegen(context, builder, sig, args):
            bits = _load(context, builder, sig.args[1], args[1], args[2], I32)
            b8 = builder.zext(builder.bitcast(bits, _v(ir.IntType(1), 32)), u8x32.lltype)
            return builder.or_(args[0], builder.shl(b8, ir.Constant(u8x32.lltype, [4] * 32)))
        return u8x32(codes, w, types.intp, types.intp), codegen

    @intrinsic
    def with_2bits(typingctx, codes, w, o, shift):
        """codes | ((w[o + l] >> shift) & 3) << 4, l = 0..31: Q6_K's upper two bits"""
        def codegen(context, builder, sig, args):
            c = _load(context, builder, sig.args[1], args[1], args[2], u8x32.lltype)
            s = _splat(builder, builder.trunc(args[3], I8), 32)
            two = builder.and_(builder.lshr(c, s), ir.Constant(u8x32.lltype, [3] * 32))
            return builder.or_(args[0], builder.shl(two, ir.Constant(u8x32.lltype, [4] * 32)))
        return u8x32(codes, w, types.intp, types.intp), codegen

    @intrinsic
    def prefetch(typingctx, w, o):
        """a hint to fetch the cache line holding w[o] (never faults, even past the end)"""
        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            p = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                ir.VoidType(), [p.type, I32, I32, I32]), "llvm.prefetch.p0")
            builder.call(fn, [p, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])
            return context.get_dummy_value()
        return types.none(w, types.intp), codegen

    # ---- the dot product ---------------------------------------------------------------
    def _sdot(builder, acc, a, b):
        """acc + a . b for 32 signed bytes each, as two 16-byte sdot: lane i of a 4-lane
        sdot is bytes 4i..4i+3 of its 16, so the two halves side by side are i32x8's lanes"""
        def half(v, k, n):
            return builder.shuffle_vector(v, v, ir.Constant(_v(I32, n), list(range(k * n, (k + 1) * n))))
        out = [_call(builder, "llvm.aarch64.neon.sdot.v4i32.v16i8", _v(I32, 4),
                     [half(acc, k, 4), half(a, k, 16), half(b, k, 16)]) for k in (0, 1)]
        return builder.shuffle_vector(out[0], out[1], ir.Constant(_v(I32, 8), list(range(8))))

    def _dot_u8_s8(builder, u, s):
        """32 unsigned bytes (< 128) . 32 signed bytes -> i32x8 (lane i: bytes 4i..4i+3)"""
        if ARM_DOTPROD:
            return _sdot(builder, ir.Constant(i32x8.lltype, [0] * 8), u, s)
        if X86_VNNI:
            return _call(builder, "llvm.x86.avx512.vpdpbusd.256", i32x8.lltype,
                         [ir.Constant(i32x8.lltype, [0] * 8), builder.bitcast(u, i32x8.lltype),
                          builder.bitcast(s, i32x8.lltype)])
        if X86_AVX2:    # pairs of u8*s8 -> int16 (no saturation: |code| <= 128, |x| <= 127)
            p16 = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _v(I16, 16), [u, s])
            return _call(builder, "llvm.x86.avx2.pmadd.wd", i32x8.lltype, [p16, ir.Constant(_v(I16, 16), [1] * 16)])
        p = builder.mul(builder.zext(u, _v(I32, 32)), builder.sext(s, _v(I32, 32)))
        return _sum_groups_of_4(builder, p)

    def _sum_groups_of_4(builder, p):
        lanes = [builder.shuffle_vector(p, p, ir.Constant(_v(I32, 8), [4 * i + j for i in range(8)]))
                 for j in range(4)]
        return builder.add(builder.add(lanes[0], lanes[1]), builder.add(lanes[2], lanes[3]))

    @intrinsic
    def dot(typingctx, codes, xq, xo):
        """unsigned codes . xq[xo : xo+32] (int8 activations) -> i32x8"""
        def codegen(context, builder, sig, args):
            x = _load(context, builder, sig.args[1], args[1], args[2], u8x32.lltype)
            return _dot_u8_s8(builder, args[0], x)
        return i32x8(codes, xq, types.intp), codegen

    @intrinsic
    def dot_acc(typingctx, acc, codes, xq, xo):
        """acc + unsigned codes . xq[xo : xo+32], lane by lane (VNNI: one vpdpbusd)"""
        def codegen(context, builder, sig, args):
            x = _load(context, builder, sig.args[2], args[2], args[3], u8x32.lltype)
            if X86_VNNI:
                return _call(builder, "llvm.x86.avx512.vpdpbusd.256", i32x8.lltype,
                             [args[0], builder.bitcast(args[1], i32x8.lltype), builder.bitcast(x, i32x8.lltype)])
            if ARM_DOTPROD:
                return _sdot(builder, args[0], args[1], x)
            return builder.add(args[0], _dot_u8_s8(builder, args[1], x))
        return i32x8(acc, codes, xq, types.intp), codegen

    # The int8 prefill's inner step, over 8 rows interleaved 4 bytes at a time (rows.py):
    # lane i gets the dot of the 4 unsigned codes p[o+4i : o+4i+4] with the same 4 int8
    # activations xq[xo : xo+4].  AVX2 without VNNI has no one-instruction u8 x s8 -> int32
    # dot: vpmaddubsw gives int16 sums of pairs, and a second multiply (vpmaddwd by ones)
    # widens them.  The pair sums fit int16 for a while, |q x + q' x'| <= 2 * 128 * max_code,
    # so they are added as int16 (vpaddw) for up to 32767 // (2 * 128 * max_code) steps --
    # 8 for 4-bit codes: a whole block -- and widened once, a third fewer instructions
    # per step.  On the other paths the pairs are the int32 lanes themselves.
    _PAIRS16 = X86_AVX2 and not X86_VNNI

    @intrinsic
    def pairs_acc_x4(typingctx, acc, p, o, xq, xo):
        """acc + p[o : o+32] . (xq[xo : xo+4] in every lane), in a pair accumulator
        (AVX2: 16 int16 pairs; elsewhere 8 int32 lanes): read it through widen_pairs."""
        def codegen(context, builder, sig, args):
            w = _load(context, builder, sig.args[1], args[1], args[2], u8x32.lltype)
            x4 = _load(context, builder, sig.args[3], args[3], args[4], I32)
            x = builder.bitcast(_splat(builder, x4, 8), u8x32.lltype)
            if _PAIRS16:
                p16 = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _v(I16, 16), [w, x])
                return builder.bitcast(builder.add(builder.bitcast(args[0], _v(I16, 16)), p16), i32x8.lltype)
            if X86_VNNI:
                return _call(builder, "llvm.x86.avx512.vpdpbusd.256", i32x8.lltype,
                             [args[0], builder.bitcast(w, i32x8.lltype), builder.bitcast(x, i32x8.lltype)])
            if ARM_DOTPROD:
                return _sdot(builder, args[0], w, x)
            return builder.add(args[0], _dot_u8_s8(builder, w, x))
        return i32x8(acc, p, types.intp, xq, types.intp), codegen

    @intrinsic
    def widen_pairs(typingctx, acc):
        """a pair accumulator as 8 int32 lanes (AVX2: vpmaddwd by ones; elsewhere as it is)"""
        def codegen(context, builder, sig, args):
            if not _PAIRS16:
                return args[0]
            return _call(builder, "llvm.x86.avx2.pmadd.wd", i32x8.lltype,
                         [builder.bitcast(args[0], _v(I16, 16)), ir.Constant(_v(I16, 16), [1] * 16)])
        return i32x8(acc), codegen

    @intrinsic
    def dot_scaled(typingctx, acc, codes, xq, xo, s):
        """acc + (codes . xq[xo : xo+32]) * s, lane by lane (s: sub-block scales, |s| < 2^15,
        from lane() or scale_pair(): on x86 int16 lanes 2i and 2i+1 hold int32 lane i's).
        On x86 the scale rides in the second multiply-add for free: vpmaddubsw gives int16
        pairs, vpmaddwd (or VNNI vpdpwssd, which also adds acc) multiplies them by the
        scale and sums them into the int32 lanes."""
        def codegen(context, builder, sig, args):
            acc, codes, s = args[0], args[1], args[4]
            x = _load(context, builder, sig.args[2], args[2], args[3], u8x32.lltype)
            if not X86_AVX2:
                return builder.add(acc, builder.mul(_dot_u8_s8(builder, codes, x), s))
            p16 = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _v(I16, 16), [codes, x])
            s16 = builder.bitcast(s, _v(I16, 16))
            if X86_VNNI:
                return _call(builder, "llvm.x86.avx512.vpdpwssd.256", i32x8.lltype,
                             [acc, builder.bitcast(p16, i32x8.lltype), builder.bitcast(s16, i32x8.lltype)])
            return builder.add(acc, _call(builder, "llvm.x86.avx2.pmadd.wd", i32x8.lltype, [p16, s16]))
        return i32x8(acc, codes, xq, types.intp, i32x8), codegen

    @intrinsic
    def dot_signed(typingctx, codes, xq, xo):
        """signed codes (Q8_0) . xq[xo : xo+32] -> i32x8.  On x86: |w| . (x with w's sign),
        the unsigned-times-signed form the instructions take."""
        def codegen(context, builder, sig, args):
            x = _load(context, builder, sig.args[1], args[1], args[2], u8x32.lltype)
            if ARM_DOTPROD:     # signed times signed is what sdot does
                return _sdot(builder, ir.Constant(i32x8.lltype, [0] * 8), args[0], x)
            if X86_AVX2:
                absw = _call(builder, "llvm.abs.v32i8", u8x32.lltype, [args[0], ir.Constant(ir.IntType(1), 0)])
                xs = _call(builder, "llvm.x86.avx2.psign.b", u8x32.lltype, [x, args[0]])
                return _dot_u8_s8(builder, absw, xs)
            p = builder.mul(builder.sext(args[0], _v(I32, 32)), builder.sext(x, _v(I32, 32)))
            return _sum_groups_of_4(builder, p)
        return i32x8(codes, xq, types.intp), codegen

    # ---- accumulating ------------------------------------------------------------------
    @intrinsic
    def zeros_i32x8(typingctx):
        def codegen(context, builder, sig, args):
            return ir.Constant(i32x8.lltype, [0] * 8)
        return i32x8(), codegen

    @intrinsic
    def zeros_f32x8(typingctx):
        def codegen(context, builder, sig, args):
            return ir.Constant(f32x8.lltype, [0.0] * 8)
        return f32x8(), codegen

    @intrinsic
    def add(typingctx, a, b):
        """a + b, lane by lane"""
        def codegen(context, builder, sig, args):
            return builder.add(args[0], args[1])
        return i32x8(i32x8, i32x8), codegen

    @intrinsic
    def mul(typingctx, a, b):
        """a * b, lane by lane"""
        def codegen(context, builder, sig, args):
            return builder.mul(args[0], args[1])
        return i32x8(i32x8, i32x8), codegen

    # Sub-block scales for dot_scaled.  On x86 they are int16, the vpmaddwd operand, each
    # in both halves of the 256-bit register (vpshufb does not cross the halves); lane()
    # is then one vpshufb with a constant mask, where an int32 lane took two shuffles.
    def _i16_both_halves(builder, v8):
        """<8 x i16> -> <16 x i16> [v, v], as the i32x8 type"""
        return builder.bitcast(builder.shuffle_vector(v8, v8, ir.Constant(_v(I32, 16), list(range(8)) * 2)),
                               i32x8.lltype)

    @intrinsic
    def lane(typingctx, v, j):
        """scale j of v (q4_K_scales' sc) in all 8 lanes (j a constant once inlined)"""
        def codegen(context, builder, sig, args):
            j = builder.trunc(args[1], I16)
            if not X86_AVX2:
                return _splat(builder, builder.extract_element(args[0], builder.zext(j, I32)), 8)
            two_j = builder.mul(j, ir.Constant(I16, 2))      # bytes 2j, 2j+1: int16 j, everywhere
            pick = builder.or_(two_j, builder.shl(builder.add(two_j, ir.Constant(I16, 1)), ir.Constant(I16, 8)))
            mask = builder.bitcast(_splat(builder, pick, 16), u8x32.lltype)
            out = _call(builder, "llvm.x86.avx2.pshuf.b", u8x32.lltype,
                        [builder.bitcast(args[0], u8x32.lltype), mask])
            return builder.bitcast(out, i32x8.lltype)
        return i32x8(v, types.intp), codegen

    @intrinsic
    def scale_pair(typingctx, w, o):
        """the int8 scales w[o], w[o+1] as lanes 0..3 and 4..7 (Q6_K: one per 16 weights)"""
        def codegen(context, builder, sig, args):
            two = _load(context, builder, sig.args[0], args[0], args[1], _v(I8, 2))
            if X86_AVX2:
                two = builder.sext(two, _v(I16, 2))
                return builder.bitcast(builder.shuffle_vector(two, two, ir.Constant(_v(I32, 16), [0] * 8 + [1] * 8)),
                                       i32x8.lltype)
            two = builder.sext(two, _v(I32, 2))
            return builder.shuffle_vector(two, two, ir.Constant(_v(I32, 8), [0, 0, 0, 0, 1, 1, 1, 1]))
        return i32x8(w, types.intp), codegen

    @intrinsic
    def q4_K_scales(typingctx, w, o):
        """the eight 6-bit (scale, min) pairs packed in the 12 bytes b = w[o : o+12] (Q4_K/Q5_K):
             j < 4:  sc_j = b[j] & 63                        m_j = b[j+4] & 63
             j >= 4: sc_j = b[j+4] & 15 | (b[j-4] >> 6) << 4  m_j = b[j+4] >> 4 | (b[j] >> 6) << 4
        as two i32x8 (lane j; on x86 sc as lane() takes it), built with byte shuffles.  Reads
        16 bytes (the block continues)."""
        def codegen(context, builder, sig, args):
            b = _load(context, builder, sig.args[0], args[0], args[1], _v(I8, 16))

            def pick(idx):
                return builder.shuffle_vector(b, b, ir.Constant(_v(I32, 8), idx))

            def c8(v):
                return ir.Constant(_v(I8, 8), [v] * 8)
            first = ir.Constant(_v(ir.IntType(1), 8), [1, 1, 1, 1, 0, 0, 0, 0])
            lo, lo4, lo_m4, lo_0 = (pick([0, 1, 2, 3, 8, 9, 10, 11]), pick([4, 5, 6, 7, 8, 9, 10, 11]),
                                    pick([0, 1, 2, 3, 0, 1, 2, 3]), pick([4, 5, 6, 7, 4, 5, 6, 7]))
            top2_sc = builder.shl(builder.lshr(lo_m4, c8(6)), c8(4))
            top2_m = builder.shl(builder.lshr(lo_0, c8(6)), c8(4))
            sc = builder.select(first, builder.and_(lo, c8(63)), builder.or_(builder.and_(lo, c8(15)), top2_sc))
            m = builder.select(first, builder.and_(lo4, c8(63)), builder.or_(builder.lshr(lo4, c8(4)), top2_m))
            sc = (_i16_both_halves(builder, builder.zext(sc, _v(I16, 8))) if X86_AVX2
                  else builder.zext(sc, i32x8.lltype))
            return cgutils.make_anonymous_struct(builder, [sc, builder.zext(m, i32x8.lltype)])
        return types.UniTuple(i32x8, 2)(w, types.intp), codegen

    @intrinsic
    def load_i32x8(typingctx, a, k):
        """a[k : k+8] of an int32 array"""
        def codegen(context, builder, sig, args):
            return _load(context, builder, sig.args[0], args[0], args[1], i32x8.lltype)
        return i32x8(a, types.intp), codegen

    @intrinsic
    def splat_i32(typingctx, v):
        """the integer v in all 8 int32 lanes"""
        def codegen(context, builder, sig, args):
            return _splat(builder, builder.trunc(args[0], I32) if args[0].type != I32 else args[0], 8)
        return i32x8(v), codegen

    @intrinsic
    def load_f32x8(typingctx, a, k):
        """a[k : k+8] of a float32 array"""
        def codegen(context, builder, sig, args):
            return _load(context, builder, sig.args[0], args[0], args[1], f32x8.lltype)
        return f32x8(a, types.intp), codegen

    @intrinsic
    def store_f32x8(typingctx, a, k, v):
        """a[k : k+8] = v (a float32 array)"""
        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            builder.store(args[2], builder.bitcast(builder.gep(data, [args[1]]), f32x8.lltype.as_pointer()), align=4)
            return context.get_dummy_value()
        return types.none(a, types.intp, v), codegen

    @intrinsic
    def fmadd(typingctx, acc, a, b):
        """acc + a * b, lane by lane (floats)"""
        def codegen(context, builder, sig, args):
            return builder.fadd(args[0], builder.fmul(args[1], args[2], flags=("contract",)), flags=("contract",))
        return f32x8(f32x8, f32x8, f32x8), codegen

    @intrinsic
    def int8x8(typingctx, w, o):
        """the 8 signed bytes w[o : o+8] as int32 lanes (Q6_K's sub-block scales)"""
        def codegen(context, builder, sig, args):
            return builder.sext(_load(context, builder, sig.args[0], args[0], args[1], _v(I8, 8)), i32x8.lltype)
        return i32x8(w, types.intp), codegen

    @intrinsic
    def fma(typingctx, acc, v, s):
        """acc + float(v) * s   (s a float32, or an f32x8 lane by lane)"""
        def codegen(context, builder, sig, args):
            vf = builder.sitofp(args[1], f32x8.lltype)
            sv = args[2] if sig.args[2] == f32x8 else _splat(builder, args[2], 8)
            return builder.fadd(args[0], builder.fmul(vf, sv, flags=("contract",)), flags=("contract",))
        if s != f32x8 and not isinstance(s, types.Float):
            return None
        return f32x8(acc, v, s), codegen

    @intrinsic
    def hsum(typingctx, v):
        """the sum of the 8 lanes, as a tree: (0+4 + 2+6) + (1+5 + 3+7)"""
        def codegen(context, builder, sig, args):
            return _tree_sum(builder, args[0])
        return types.float32(v), codegen

    def _tree_sum(builder, v):
        n = 8
        while n > 1:
            n //= 2
            a = builder.shuffle_vector(v, v, ir.Constant(_v(I32, n), list(range(n))))
            b = builder.shuffle_vector(v, v, ir.Constant(_v(I32, n), list(range(n, 2 * n))))
            v = builder.fadd(a, b)
        return builder.extract_element(v, ir.Constant(I32, 0))

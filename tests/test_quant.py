"""tinyllm.quant against gguf-py's dequantizer and against its own numpy references.

- dequantize(): bit-exact with gguf.quants.dequantize, on random blocks (scales
  include 0, subnormals, the f16 maximum and negatives) and on real model tensors.
- linear(): the numba kernels equal the numpy path that rounds activations the same
  way (tight), and are close to dequantize(W) @ x (loose: 8-bit activations).  One-token
  decode over the int8 formats rounds x by default (their matvec_int8); those kernels are
  checked against the same numpy rounding path on every SIMD path (AVX-512 VNNI, AVX2,
  generic), and against the plain int8 reference (rows.matvec_q8_0_reference).  Every
  numerics ("decode", "exact", "llama") is a per-call argument: no fresh process needed.
- TINYLLM_NO_NUMBA=1 gives the same numbers; unknown types fail with one clear error.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from tinyllm import jit
from tinyllm.errors import TinyLLMError
from tinyllm.gguf_file import GGUFFile
from tinyllm.quant import FORMATS, INT8_DECODE_TYPES, QTensor, dequantize, linear, linears, supported_types
from tinyllm.quant import activations as act
from tinyllm.quant.common import F16_TO_F32

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "smollm2": ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": ROOT / "models" / "gemma-3-270m-q4_k_m.gguf",
}
BLOCK_TYPES = [n for n in supported_types() if FORMATS[n].block_size > 1]
# byte offsets of each type's f16 scale fields inside a block
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
              "IQ4_NL": [0], "IQ4_XS": [0]}


def random_blocks(name: str, n_blocks: int, rng, extreme: bool = False) -> np.ndarray:
    """Random bytes for n_blocks blocks with finite f16 scales.  extreme=True mixes in
    zero, negative, subnormal and largest-f16 scales."""
    f = FORMATS[name]
    if f.block_size == 1:   # float types: random finite values
        v = rng.standard_normal(n_blocks) * 10.0 ** rng.integers(-6, 4, n_blocks)
        dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.float32}[name]
        b = v.astype(dtype).view(np.uint8).reshape(n_blocks, -1)
        return np.ascontiguousarray(b[:, 2:] if name == "BF16" else b)   # bf16: top halves
    blocks = rng.integers(0, 256, (n_blocks, f.type_size), dtype=np.uint8)
    for o in F16_FIELDS[name]:
        d = (rng.standard_normal(n_blocks) * 0.02).astype(np.float16)
        if extreme:
            specials = np.array([0.0, -0.0, 65504.0, -65504.0, 6e-8, -6e-8, 1e-5, 1.0],
                                dtype=np.float16)
            pick = rng.integers(0, 3, n_blocks) == 0
            d[pick] = specials[rng.integers(0, len(specials), pick.sum())]
        blocks[:, o:o + 2] = d.view(np.uint8).reshape(-1, 2)
    return blocks


def gguf_dequantize(raw, name):
    return np.asarray(quants.dequantize(raw, GGMLQuantizationType[name]), dtype=np.float32)


def assert_bit_exact(mine, ref):
    assert mine.shape == ref.shape and mine.dtype == np.float32
    # compare bit patterns: exact, and nan == nan
    mismatch = mine.view(np.uint32) != ref.view(np.uint32)
    assert not mismatch.any(), f"{mismatch.sum()} of {mine.size} values differ"


# ---- dequantization --------------------------------------------------------------------------
@pytest.mark.parametrize("name", supported_types())
@pytest.mark.parametrize("extreme", [False, True])
def test_dequantize_random_blocks_bit_exact(name, extreme):
    rng = np.random.default_rng(hash((name, extreme)) % 2**32)
    raw = random_blocks(name, 512, rng, extreme).reshape(8, -1)   # 8 rows of 64 blocks
    assert_bit_exact(dequantize(raw, FORMATS[name].ggml_type), gguf_dequantize(raw, name))


def _model_tensors():
    """(model, tensor name) for the first two tensors of each type in each model."""
    out = []
    for model, path in MODELS.items():
        g = GGUFFile(path)
        seen: dict[str, int] = {}
        for t in g.tensors.values():
            if seen.get(t.type_name, 0) < 2 and len(t.ne) == 2:
                seen[t.type_name] = seen.get(t.type_name, 0) + 1
                out.append((model, t.name))
        g.close()
    return out


@pytest.fixture(scope="module")
def models():
    return {m: GGUFFile(p) for m, p in MODELS.items()}


@pytest.mark.parametrize("model,tensor", _model_tensors())
def test_dequantize_real_tensors_bit_exact(models, model, tensor):
    g = models[model]
    info = g.tensors[tensor]
    raw = g.raw(tensor)[:4096]          # the 262144-row embeddings: a slice is enough
    assert_bit_exact(dequantize(raw, info.ggml_type), gguf_dequantize(raw, info.type_name))


def test_rows_is_an_embedding_lookup(models):
    g = models["smollm2"]
    info = g.tensors["token_embd.weight"]
    w = QTensor(g.raw("token_embd.weight"), info.ggml_type, info.ne[0])
    ids = [0, 1, 49151, 7, 7]
    expect = gguf_dequantize(g.raw("token_embd.weight")[ids], info.type_name)
    assert_bit_exact(w.rows(ids), expect)
    assert w.shape == (49152, 576) and w.nbytes == info.n_bytes
    with pytest.raises(IndexError):
        w.rows([49152])


@pytest.mark.skipif(not jit.HAVE_NUMBA, reason="the numba unpackers")
@pytest.mark.parametrize("name", [n for n in BLOCK_TYPES])
def test_kernel_unpack_row_is_the_dequantization(name):
    """The numba kernel multiplies by exactly the weights dequantize() gives (Q4_1/Q5_1:
    d*q, with the offsets m kept apart for Q8_1's f16 sum term)."""
    f = FORMATS[name]
    rng = np.random.default_rng(sum(map(ord, name)) + 7)
    raw = random_blocks(name, 8, rng, extreme=True).reshape(1, -1)[0]
    n = 8 * f.block_size
    wf, gm = np.full(n, np.nan, np.float32), np.full(n // 32, np.nan, np.float32)
    f.unpack_row(raw, wf, gm, F16_TO_F32, f.aux)
    ref = gguf_dequantize(raw[None, :], name)[0]
    if f.mins == "q8_1":
        m = F16_TO_F32[raw.reshape(8, -1)[:, 2].astype(np.int32) | (raw.reshape(8, -1)[:, 3].astype(np.int32) << 8)]
        assert_bit_exact(gm, m)
        ref = dequantize(raw[None, :], f.ggml_type)[0] - np.repeat(m, 32)
        assert np.allclose(wf, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    else:
        assert_bit_exact(wf, ref)


# ---- activation rounding ---------------------------------------------------------------------
@pytest.mark.skipif(not jit.HAVE_NUMBA, reason="the numba-side rounding")
def test_round_to_f16_matches_numpy():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.standard_normal(20000) * 10.0 ** rng.integers(-9, 6, 20000),
                        [0.0, 65504.0, 65519.0, 65520.0, 1e6, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26,
                         2.0 ** -14 * 1.5, np.inf, -np.inf]]).astype(np.float32)
    mine = np.array([act.round_to_f16(x) for x in v], dtype=np.float32)
    with np.errstate(over="ignore"):
        assert_bit_exact(mine, v.astype(np.float16).astype(np.float32))


@pytest.mark.skipif(not jit.HAVE_NUMBA, reason="compares numba with numpy")
def test_activation_quantizers_numba_equal_numpy():
    from tinyllm.quant.rows import quantize_act
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, 512)) * 3).astype(np.float32)
    x[0, :32] = 0.0                        # an all-zero block
    x[1, 5] = 0.5 / (127 / np.abs(x[1, :32]).max())   # near a rounding tie
    for t in range(3):                     # the integers and scales themselves
        xq, xd, xs = (np.empty(512, np.float32), np.empty(16, np.float32),
                      np.empty(16, np.float32))
        act.quantize_q8_1(x[t], xq, xd, xs)
        q, d, s = act.quantize_q8_1_np(x[t:t + 1])
        assert_bit_exact(xq, q.reshape(-1))
        assert_bit_exact(xd, d[0])
        assert_bit_exact(xs, s[0])
        xd8, bsum = np.empty(2, np.float32), np.empty(32, np.float32)
        act.quantize_q8_K(x[t], xq, xd8, bsum)
        q, d, bs = act.quantize_q8_K_np(x[t:t + 1])
        assert_bit_exact(xq, q.reshape(-1))
        assert_bit_exact(xd8, d[0])
        assert_bit_exact(bsum, bs.reshape(-1).astype(np.float32))
        assert q.max() <= 127 and q.min() >= -127
    # what the kernel multiplies by: xa = d_x * q_x, and Q8_1's s_x
    for kind, np_fn in [(0, act.quantize_q8_0_np), (1, act.quantize_q8_1_np),
                        (2, act.quantize_q8_K_np)]:
        xa, xs = quantize_act(kind, x)
        ref = np_fn(x)
        assert_bit_exact(xa, (ref[0] * ref[1][..., None]).reshape(3, 512))
        assert_bit_exact(xs, ref[2] if kind == 1 else np.zeros((3, 0), np.float32))


def test_q8_0_activation_rounding_follows_llama_cpp():
    # amax 127 -> d = 1 exactly; 2.5 rounds away from zero (C roundf), not to even
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = [127.0, 2.5, -2.5, 0.49]
    q, d = act.quantize_q8_0_np(x)
    assert d[0, 0] == 1.0 and list(q[0, 0, :4]) == [127, 3, -3, 0]
    # Q8_K: scale -127/max, ties to even
    x = np.zeros((1, 256), np.float32)
    x[0, :3] = [127.0, 2.5, 3.5]
    q, d, _ = act.quantize_q8_K_np(x)
    assert d[0, 0] == -1.0 and list(q[0, 0, :3]) == [-127, -2, -4]


# ---- matvec / matmul -------------------------------------------------------------------------
def weights(name, n_rows, n_cols, rng):
    """Realistic weights: gguf's quantizer where it has one, else random blocks."""
    f = FORMATS[name]
    try:
        w = rng.standard_normal((n_rows, n_cols)).astype(np.float32) * 0.05
        raw = np.asarray(quants.quantize(w, GGMLQuantizationType[name])).view(np.uint8)
        return np.ascontiguousarray(raw.reshape(n_rows, -1))
    except NotImplementedError:
        nb = n_rows * n_cols // f.block_size
        return random_blocks(name, nb, rng).reshape(n_rows, -1)


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", supported_types())
def test_linear_matches_references(name):
    """linear() against float64 dequantize(W) @ x (prefill, and decode of the formats
    without an int8 kernel: x as it is), one-token decode of the int8 formats against
    the numpy path that rounds x the same way, numerics "exact" (the float decode
    kernels) against float64, and numerics "llama" (every product rounds x) against
    that numpy path."""
    rng = np.random.default_rng(sum(map(ord, name)))
    f = FORMATS[name]
    n_cols = 512 if f.block_size == 256 else 160
    w = QTensor(weights(name, 67, n_cols, rng), f.ggml_type, n_cols)
    x = rng.standard_normal((5, n_cols)).astype(np.float32)
    y1 = linear(x[0], w, numerics="decode")    # one row, not a decode step: x as it is
    yT = linear(x, w, numerics="decode")       # prefill: matmul, x as it is
    assert y1.shape == (67,) and yT.shape == (5, 67)
    exact = x.astype(np.float64) @ w.dequantize().astype(np.float64).T
    assert rel_err(y1, exact[0]) < 2e-6
    assert rel_err(yT, exact) < 2e-6
    yd = linear(x[0], w, decode=True, numerics="decode")   # a decode step
    if f.ggml_type in INT8_DECODE_TYPES:
        assert rel_err(yd, f.linear_np(w.raw, x[:1])[0]) < 2e-6
        assert rel_err(yd, exact[0]) < 3e-2
    else:
        assert np.array_equal(yd, y1)
    out = np.full(67, np.nan, np.float32)
    assert linear(x[0], w, out=out, numerics="decode") is out and np.array_equal(out, y1)
    ye = linear(x[0], w, decode=True, numerics="exact")     # a decode step, x as it is
    assert rel_err(ye, exact[0]) < 2e-6
    if f.act != "f32":
        # every product rounds x like llama.cpp: equals the numpy rounding path
        same_rounding = f.linear_np(w.raw, x)
        assert rel_err(linear(x, w, numerics="llama"), same_rounding) < 2e-6
        assert rel_err(linear(x[0], w, decode=True, numerics="llama"), same_rounding[0]) < 2e-6
        tol = {"f16": 2e-3, "bf16": 2e-2}.get(f.act, 3e-2)
        assert rel_err(same_rounding, exact) < tol


@pytest.mark.parametrize("numerics", ["llama", "exact"])
def test_linears_stack_matrices_into_one_call_with_the_same_numbers(numerics):
    """linears(x, A, B, C) in a decode step runs neighbours of one format together, up to
    three per kernel call (rows.matvec_rows), and must give each matrix exactly what
    linear() gives it alone: row counts with every tail (4k+1..4k+3, and fewer rows than
    four), four matrices of one format (three stacked, then one), and a format change in
    the middle (the groups split there).  T tokens take one matmul each, as linear()."""
    rng = np.random.default_rng(11)
    for name in ["Q4_1", "Q4_K", "Q8_0", "F32", "Q3_K"]:
        f = FORMATS[name]
        n_cols = 512 if f.block_size == 256 else 160
        ws = [QTensor(weights(name, n, n_cols, rng), f.ggml_type, n_cols) for n in (37, 2, 6, 9)]
        other = QTensor(weights("Q8_0" if name != "Q8_0" else "Q4_0", 5, n_cols, rng),
                        FORMATS["Q8_0" if name != "Q8_0" else "Q4_0"].ggml_type, n_cols)
        x = rng.standard_normal((1, n_cols)).astype(np.float32)
        for group in (ws, [ws[0], other, ws[1], ws[2]], ws[1:2]):
            got = linears(x, *group, decode=True, numerics=numerics)
            want = [linear(x, w, decode=True, numerics=numerics) for w in group]
            assert [g.shape for g in got] == [w.shape for w in want], name
            assert all(np.array_equal(g, w) for g, w in zip(got, want)), name
        if ws[0].matvec(numerics, True) is not None:      # the four: one call of three, one alone
            plan = ws[0]._plans[(tuple(ws), numerics, True)]
            assert [len(cuts) for _, _, _, cuts, _ in plan] == [3, 1], name
        xT = rng.standard_normal((3, n_cols)).astype(np.float32)
        for g, w in zip(linears(xT, *ws, numerics=numerics), ws):
            assert np.array_equal(g, linear(xT, w, numerics=numerics)), name


def test_linear_on_real_layers(models):
    """One matrix of every type in the two models, decode and prefill."""
    rng = np.random.default_rng(3)
    cases = [("smollm2", "blk.0.ffn_down.weight"), ("smollm2", "token_embd.weight"),
             ("gemma3", "blk.0.attn_q.weight"), ("gemma3", "blk.0.attn_output.weight"),
             ("gemma3", "blk.0.ffn_down.weight"), ("gemma3", "blk.0.attn_v.weight")]
    for model, name in cases:
        g = models[model]
        info = g.tensors[name]
        raw = g.raw(name)[:3000]
        w = QTensor(raw, info.ggml_type, info.ne[0])
        x = rng.standard_normal((2, info.ne[0])).astype(np.float32)
        exact = x.astype(np.float64) @ gguf_dequantize(raw, info.type_name).astype(np.float64).T
        assert rel_err(linear(x[1], w, numerics="decode"), exact[1]) < 2e-6, name
        if info.ggml_type in INT8_DECODE_TYPES:    # a decode step rounds x to 8 bits
            yd = linear(x[1], w, decode=True, numerics="decode")
            assert rel_err(yd, w.fmt.linear_np(w.raw, x[1:])[0]) < 2e-6, name
            assert rel_err(yd, exact[1]) < 3e-2, name
        assert rel_err(linear(x, w, numerics="decode"), exact) < 2e-6, name
        if info.ggml_type in INT8_DECODE_TYPES:    # the default: the int8 prefill kernels
            assert rel_err(linear(x, w), w.fmt.linear_np(w.raw, x)) < 2e-6, name


# ---- the int8 kernels on every SIMD path --------------------------------------------------
INT8_SCRIPT = r"""
import json, sys
import numpy as np
from tinyllm.quant import FORMATS, QTensor, simd
from tinyllm.quant.common import F16_TO_F32

def err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())

out = {"path": simd.PATH}
for label, name, raw_path, n_cols, x_path in json.loads(sys.argv[1]):
    f = FORMATS[name]
    w = QTensor(np.load(raw_path), f.ggml_type, n_cols)
    x = np.load(x_path)                                   # (T, n)
    ref = f.linear_np(w.raw, x)
    steps = np.full((x.shape[0], w.n_rows), np.nan, np.float32)
    for t in range(x.shape[0]):                           # decode, token by token
        f.matvec_int8(w._w, w._none, w._none, x[t], steps[t], F16_TO_F32)
    y = np.full((x.shape[0], w.n_rows), np.nan, np.float32)
    f.prefill_int8(w._w, x, y, F16_TO_F32)                # all T tokens at once
    out[label] = {"decode": err(steps, ref), "prefill": err(y, ref), "prefill_vs_decode": err(y, steps)}
print(json.dumps(out))
"""


def _native_simd_path() -> str:
    """The int8 dot-product path this CPU should get (see simd.py), from what the OS reports."""
    from tinyllm import cpu
    if cpu.AARCH64:
        return "dotprod" if cpu.arm_has_dotprod() else "neon"
    if not jit.HAVE_NUMBA:
        return "generic"
    import llvmlite.binding as llvm
    f = {k for k, v in llvm.get_host_cpu_features().items() if v}
    return "vnni" if {"avx2", "avx512vnni", "avx512vl"} <= f else "avx2" if "avx2" in f else "generic"


# the bytes of a block that hold codes (not scales), and the byte that sets every code
# there to its largest value
CODE_BYTES = {"Q8_0": (slice(2, 34), 0x7F), "Q4_0": (slice(2, 18), 0xFF), "Q4_1": (slice(4, 20), 0xFF),
              "Q5_0": (slice(2, 22), 0xFF), "Q4_K": (slice(16, 144), 0xFF), "Q6_K": (slice(0, 192), 0xFF)}


# the paths TINYLLM_SIMD can force on this machine's architecture (downwards from native)
FORCED_PATHS = ["neon", "generic"] if platform.machine().lower() in ("aarch64", "arm64") else ["avx2", "generic"]


@pytest.mark.skipif(not jit.HAVE_NUMBA, reason="the numba int8 kernels")
@pytest.mark.parametrize("path", ["native"] + FORCED_PATHS)
def test_int8_kernels_equal_the_rounding_oracle(tmp_path, path):
    """matvec_int8 (decode) and prefill_int8 (T tokens; int8 dot products) against the
    numpy path that rounds x the way llama.cpp does, and against each other token by
    token, for each format, with 4k+1..4k+3 rows (the tail), a 2304-wide row (two column
    panels) and T = 67 tokens (more than one slice of rows.TOKENS, and a multiple of
    neither it nor the four tokens of a step).  The forced paths
    run in a fresh process (TINYLLM_SIMD): on x86 "avx2" and "generic"; on aarch64 "neon"
    (the Pi 4's code) beside native (dotprod where the CPU has it: the Pi 5's).  The ARM
    CI job runs this under qemu with both CPU models."""
    rng = np.random.default_rng(7)
    jobs = []
    names = [n for n in supported_types() if FORMATS[n].ggml_type in INT8_DECODE_TYPES]
    assert sorted(names) == sorted(["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K"])
    for i, name in enumerate(names):
        # 2304 columns: more than one rows.PANEL, so the int8 prefill adds panels into y
        n_rows, n_cols = 37 + i % 3, (2304 if i % 2 else 512)
        w = weights(name, n_rows, n_cols, rng)
        x = (rng.standard_normal((67, n_cols)) * 10.0 ** rng.uniform(-3, 2, (67, 1))).astype(np.float32)
        x[:, rng.integers(0, n_cols, 5)] *= 30               # outliers set the block scales
        # the worst case for the integer sums' widths (AVX2's vpmaddubsw sums pairs of
        # products as int16, saturating): every code at its largest and every rounded x
        # at +-127 (x constant over the row), of either sign by token
        w_max = w.copy().reshape(-1, FORMATS[name].type_size)
        codes, largest = CODE_BYTES[name]
        w_max[:, codes] = largest
        x_max = np.repeat(np.where(np.arange(9) % 2, -1.0, 1.0)[:, None], n_cols, 1).astype(np.float32)
        for label, ww, xx in ((name, w, x), (name + " at the extremes", w_max.reshape(n_rows, -1), x_max)):
            np.save(tmp_path / f"{label}.w.npy", ww)
            np.save(tmp_path / f"{label}.x.npy", xx)
            jobs.append((label, name, str(tmp_path / f"{label}.w.npy"), n_cols, str(tmp_path / f"{label}.x.npy")))
    env = dict(os.environ)
    if path != "native":
        env["TINYLLM_SIMD"] = path
    # a fresh process compiles every int8 kernel: ~4 min under qemu alone, 10 with another
    # qemu compile beside it (the ARM job runs the Pi 4 case beside aarch64's tests)
    res = subprocess.run([sys.executable, "-c", INT8_SCRIPT, json.dumps(jobs)], env=env,
                         capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    # forcing only ever goes down this list: a path the CPU lacks would not run
    order = ["vnni", "avx2", "dotprod", "neon", "generic"]
    # the ARM CI job says what each qemu CPU model must get (max: dotprod, cortex-a72: neon)
    native = os.environ.get("TINYLLM_CI_EXPECT_SIMD") or _native_simd_path()
    assert got["path"] == (native if path == "native" else max(path, native, key=order.index))
    for label, *_ in jobs:
        assert max(got[label].values()) < 2e-6, (label, got[label])


def test_plain_int8_reference_is_what_the_q8_0_kernel_computes():
    """rows.matvec_q8_0_reference (the ~25-line loop a reader meets first) against the
    numpy rounding oracle and the kernel: the same rounding of x, the same sums."""
    from tinyllm.quant.rows import matvec_q8_0_reference
    rng = np.random.default_rng(11)
    raw = weights("Q8_0", 13, 256, rng)
    x = (rng.standard_normal(256) * 3).astype(np.float32)
    x[:32] = 0.0                                           # an all-zero block
    ref = matvec_q8_0_reference(raw, x)
    assert rel_err(ref, FORMATS["Q8_0"].linear_np(raw, x[None])[0]) < 2e-6
    if jit.HAVE_NUMBA:
        w = QTensor(raw, FORMATS["Q8_0"].ggml_type, 256)
        assert rel_err(linear(x, w, decode=True), ref) < 2e-6


# ---- the no-numba fallback -------------------------------------------------------------------
FALLBACK_SCRIPT = r"""
import json, sys
import numpy as np
from tinyllm import jit
from tinyllm.quant import FORMATS, QTensor, linear
assert jit.HAVE_NUMBA is False
out = {}
for name, raw_path, n_cols, x_path in json.loads(sys.argv[1]):
    w = QTensor(np.load(raw_path), FORMATS[name].ggml_type, n_cols)
    x = np.load(x_path)
    out[name] = [linear(x[0], w, decode=True).tolist(), linear(x, w).tolist()]
print(json.dumps(out))
"""


def test_no_numba_fallback_gives_the_same_numbers(tmp_path):
    rng = np.random.default_rng(4)
    jobs, expect = [], {}
    for name in supported_types():
        f = FORMATS[name]
        n_cols = 512 if f.block_size == 256 else 96
        raw = weights(name, 9, n_cols, rng)
        x = rng.standard_normal((3, n_cols)).astype(np.float32)
        np.save(tmp_path / f"{name}.w.npy", raw)
        np.save(tmp_path / f"{name}.x.npy", x)
        jobs.append((name, str(tmp_path / f"{name}.w.npy"), n_cols, str(tmp_path / f"{name}.x.npy")))
        w = QTensor(raw, f.ggml_type, n_cols)
        expect[name] = (linear(x[0], w, decode=True), linear(x, w))
    env = dict(os.environ, TINYLLM_NO_NUMBA="1")
    res = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT, json.dumps(jobs)], env=env,
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert set(got) == set(supported_types())
    for name, (y1, yT) in expect.items():
        assert rel_err(np.array(got[name][0], np.float32), y1) < 2e-6, name
        assert rel_err(np.array(got[name][1], np.float32), yT) < 2e-6, name


def test_no_numba_env_really_disables_numba():
    code = "import sys; from tinyllm import jit, quant; print(jit.HAVE_NUMBA, 'numba' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, TINYLLM_NO_NUMBA="1"),
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.stdout.split() == ["False", "False"], res.stderr


def test_a_numba_older_than_supported_is_never_imported(tmp_path):
    """Debian bookworm's armhf python3-numba is 0.56.4: seen through a --system-site-packages
    venv on 32-bit Pi OS, it must be ignored (one line on stderr), not imported.  Here a
    package named numba 0.56.4 whose import would fail loudly stands in for it."""
    fake = tmp_path / "site"
    (fake / "numba").mkdir(parents=True)
    (fake / "numba" / "__init__.py").write_text("raise SystemExit('the old numba was imported')\n")
    (fake / "numba-0.56.4.dist-info").mkdir()
    (fake / "numba-0.56.4.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: numba\nVersion: 0.56.4\n")
    code = "import sys; from tinyllm import jit, quant; print(jit.HAVE_NUMBA, 'numba' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(fake))
    env.pop("TINYLLM_NO_NUMBA", None)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]
    assert res.stderr.strip().splitlines() == [
        "tinyllm: numba 0.56.4 is older than 0.58, so it is not used: numpy kernels (slower)"]


# ---- errors and warm-up ----------------------------------------------------------------------
@pytest.mark.parametrize("ggml_type,shown", [(16, "IQ2_XXS"), (9, "Q8_1"), (99, "id 99")])
def test_unsupported_type_is_one_clear_error(ggml_type, shown):
    with pytest.raises(TinyLLMError) as e:
        QTensor(np.zeros((2, 66), np.uint8), ggml_type, 256)
    msg = str(e.value)
    assert f"tensor type {shown} is not supported" in msg and "Q4_K" in msg and "\n" not in msg


def test_warmup_announces_a_cold_cache_once(tmp_path):
    """A cold cache: one line per kernel the format needs, only those (a Q8_0 model compiles
    no other format's code); a warm one: silence.  TINYLLM_SIMD keys a cache of its own even
    under a NUMBA_CACHE_DIR of the user's."""
    code = ("from tinyllm.startup import warm_kernels; import numpy as np;"
            "warm_kernels(['Q8_0'], progress=lambda s: print('LOG', s))")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("TINYLLM_NO_NUMBA", None)
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    if not jit.HAVE_NUMBA:
        pytest.skip("numba not installed")
    # the default numerics ("llama"): int8 prefill and decode, no float kernel
    assert "LOG kernels: compiling Q8_0 int8 prefill (first run only; cached in" in first.stdout
    assert "LOG kernels: compiling Q8_0 int8 decode" in first.stdout
    assert "float decode" not in first.stdout and "Q4" not in first.stdout
    assert "compiling Q8_0 prefill" not in first.stdout
    assert "LOG" not in second.stdout
    generic = subprocess.run([sys.executable, "-c", code], env=dict(env, TINYLLM_SIMD="generic"),
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "LOG kernels: compiling Q8_0 int8 decode" in generic.stdout, generic.stderr


def test_a_cold_start_shares_its_compiles_with_a_helper(tmp_path):
    """helpers=1: a second process compiles part of the kernels into the same cache while
    this one compiles the rest; every kernel is compiled exactly once, the helper's are then
    loaded from the cache, and they compute what the in-process ones do."""
    code = """
import numpy as np
from tinyllm.quant import QTensor, linear
from tinyllm.startup import warm_kernels
done = warm_kernels(["Q8_0"], progress=lambda s: print("LOG", s), helpers=1)
print("COMPILED", sorted(done))
rng = np.random.default_rng(0)
w = rng.integers(0, 256, (64, 4 * 34), dtype=np.uint8)    # 64 rows of four Q8_0 blocks
w[:, 0::34], w[:, 1::34] = 0, 0x20                         # each block's f16 scale: 2**-7
x = rng.standard_normal((8, 128)).astype(np.float32)
y = linear(x, QTensor(w, 8, 128), numerics="llama")        # the int8 prefill kernel
print("Y", y.tobytes().hex())
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("TINYLLM_NO_NUMBA", None)
    if not jit.HAVE_NUMBA:
        pytest.skip("numba not installed")
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           cwd=ROOT, timeout=300) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr + runs[1].stderr
    first, second = (r.stdout.splitlines() for r in runs)
    names = ["Q8_0 int8 prefill", "Q8_0 int8 decode", "attention", "norms and rope"]
    for name in names:
        assert sum(f"LOG kernels: {name} compiled in" in ln for ln in first) == 1, (name, first)
    assert any("(in a helper process)" in ln for ln in first), first
    assert any("first run only" in ln for ln in first), first          # and some compiled here
    assert next(ln for ln in first if ln.startswith("COMPILED")) == f"COMPILED {sorted(names)}"
    assert not any(ln.startswith("LOG") for ln in second), second      # all cached now
    rng = np.random.default_rng(0)                     # the same product in this process
    w = rng.integers(0, 256, (64, 4 * 34), dtype=np.uint8)
    w[:, 0::34], w[:, 1::34] = 0, 0x20
    x = rng.standard_normal((8, 128)).astype(np.float32)
    here = "Y " + linear(x, QTensor(w, 8, 128), numerics="llama").tobytes().hex()
    assert [next(ln for ln in out if ln.startswith("Y")) for out in (first, second)] == [here, here]


def test_compile_helpers_follow_cores_memory_and_the_override(monkeypatch):
    from tinyllm.startup import HELPER_BYTES, compile_helpers
    monkeypatch.setenv("TINYLLM_COMPILE_JOBS", "3")
    assert compile_helpers(10 * HELPER_BYTES) == 2
    assert compile_helpers(HELPER_BYTES + 1) == 1           # memory for one helper only
    assert compile_helpers(HELPER_BYTES - 1) == 0 and compile_helpers(None) == 0
    monkeypatch.setenv("TINYLLM_COMPILE_JOBS", "1")
    assert compile_helpers(10 * HELPER_BYTES) == 0

"""tinyllm.tools.quantize: float32 rows -> GGUF block bytes, against gguf-py and llama.cpp.

- every type: gguf-py's dequantizer reads our bytes exactly as tinyllm.quant does, and
  they reconstruct the input with the error the format should have -- also on the
  cases quantizers get wrong (zero / constant / tiny / subnormal / one-signed rows, a
  huge outlier);
- F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (the types gguf-py quantizes): bytes equal to
  gguf.quants.quantize, on random data and on real model tensors;
- every type: on the synthetic model of scripts/make_quantize_fixtures.py (rebuilt here,
  sha256-checked), the RMSE per tensor is within 1.1x of llama.cpp's
  (llama_model_quantize, pure, no imatrix), and the bytes are llama.cpp's own (sha256);
- Q4_K / Q6_K bytes run through tinyllm's kernels (QTensor + linear) like the
  dequantized matrix does.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from tinyllm.gguf_file import GGUFFile
from tinyllm.quant import FORMATS, QTensor, dequantize, linear
from tinyllm.tools.quantize import QUANTIZABLE, quantize_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_quantize_fixtures as mqf  # noqa: E402  (imports llama_cpp only in main())

FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "quantize" / "llama_cpp_rmse.json").read_text())
GGUF_QUANTIZES = ("F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")

# Relative RMSE a format gives on Gaussian weights (measured ~0.8x of these).
REL_RMSE = {"F32": 0.0, "F16": 3e-4, "BF16": 3e-3, "Q8_0": 7e-3, "Q6_K": 0.022, "Q5_K": 0.045,
            "Q5_1": 0.05, "Q5_0": 0.055, "Q4_K": 0.09, "IQ4_NL": 0.095, "Q4_1": 0.10,
            "Q4_0": 0.11, "Q3_K": 0.19, "Q2_K": 0.36}


def gguf_dequantize(raw, T, shape):
    return np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[T]),
                      np.float32).reshape(shape)


def rel_rmse(a, x):
    return float(np.sqrt(np.mean((a.astype(np.float64) - x) ** 2) / np.mean(x.astype(np.float64) ** 2)))


def test_types_and_errors():
    from tinyllm.quant import iq4
    from tinyllm.tools.quantize import iq4 as iq4_quantize
    assert np.array_equal(iq4_quantize.KVALUES, iq4.KVALUES)
    assert set(QUANTIZABLE) == set(REL_RMSE)
    assert all(T in FORMATS for T in QUANTIZABLE)          # tinyllm can read them all back
    x = np.zeros((2, 48), np.float32)
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_rows(x, "Q4_K")
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_rows(x[:, :40], "Q8_0")
    with pytest.raises(ValueError, match="IQ4_XS"):
        quantize_rows(x, "IQ4_XS")
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows(x[0], "F16")
    assert quantize_rows(np.zeros((0, 256), np.float32), "Q6_K").shape == (0, 210)


# ---- 1. every type: read back by gguf-py == tinyllm, sensible error, extreme rows --------------
@pytest.fixture(scope="module")
def cases():
    """Rows of one kind each (see make_quantize_fixtures.edge_case_rows) + Gaussian rows."""
    rng = np.random.default_rng(42)
    x = mqf.edge_case_rows(40, 512, rng)
    x[32:] = rng.standard_normal((8, 512)).astype(np.float32) * 0.05
    return x


@pytest.mark.parametrize("T", QUANTIZABLE)
def test_reconstructs(T, cases):
    x = cases
    raw = quantize_rows(x, T)
    bs, ts = FORMATS[T].block_size, FORMATS[T].type_size
    assert raw.dtype == np.uint8 and raw.shape == (x.shape[0], x.shape[1] // bs * ts)
    w = gguf_dequantize(raw, T, x.shape)
    assert np.array_equal(w, dequantize(raw, FORMATS[T].ggml_type))  # both readers agree
    assert np.isfinite(w).all()
    bound = REL_RMSE[T]

    assert rel_rmse(w[32:], x[32:]) <= bound                            # Gaussian
    assert rel_rmse(w[13:32], x[13:32]) <= 2 * bound                    # heavy tails (t, df 2)
    for r in (6, 7, 9, 10, 11, 12):                                     # one-signed, sparse, ties
        assert rel_rmse(w[r], x[r]) <= 1.5 * bound, r
    assert not w[0].any()                                               # zeros stay zeros
    for r in (1, 2):                                                    # constant rows: only
        assert np.abs(w[r] - x[r]).max() <= 4e-3 * abs(x[r, 0]), r      # the f16/bf16 rounding
    for r in (3, 4):                                                    # tiny, subnormal:
        assert np.abs(w[r] - x[r]).max() <= np.abs(x[r]).max()          # no garbage
    if T != "F16":                                                      # (F16 tops out at 65504)
        assert rel_rmse(w[8], x[8]) <= bound                            # large values
    out = x[5] == 40.0                                                  # huge outliers
    assert np.abs(w[5][out] - 40.0).max() <= max(bound, 1e-3) * 40.0
    blk = max(bs, 256 if T.endswith("_K") else 32)
    quiet = ~np.repeat(out.reshape(-1, blk).any(axis=1), blk)           # blocks without one
    assert rel_rmse(w[5][quiet], x[5][quiet]) <= 1.5 * bound


def test_bf16_rounding_and_nan():
    bits = np.array([0x3F808000,     # 1 + 2^-8: halfway, rounds to even (0x3F80)
                     0x3F818000,     # halfway, rounds to even (0x3F82)
                     0x3F808001,     # just above halfway: up
                     0x7F7FFFFF,     # FLT_MAX rounds up to inf
                     0x7F800001,     # signalling NaN: kept, made quiet
                     0xFFFF0001,     # NaN with all top bits set
                     0x80000001],    # negative subnormal: rounds to -0
                    np.uint32)
    out = quantize_rows(bits.view(np.float32).reshape(1, -1), "BF16").view(np.uint16)[0]
    assert out.tolist() == [0x3F80, 0x3F82, 0x3F81, 0x7F80, 0x7FC0, 0xFFFF, 0x8000]


# ---- 2. bytes equal to gguf-py where gguf-py can quantize ------------------------------------------
def real_tensors(path, names):
    g = GGUFFile(str(path))
    out = {}
    for n in names:
        t = g.tensors[n]
        out[n] = dequantize(g.raw(n), t.ggml_type).reshape(t.ne[1], t.ne[0])
    g.close()
    return out


@pytest.fixture(scope="module")
def real(smollm2_path, gemma3_path):
    """Dequantized real weights: SmolLM2's Q4_1 / Q8_0 tensors and gemma3's k-quants."""
    t = real_tensors(smollm2_path, ["blk.0.attn_q.weight", "blk.7.ffn_down.weight",
                                    "blk.29.attn_v.weight"])
    t["token_embd[:4096]"] = real_tensors(smollm2_path, ["token_embd.weight"])["token_embd.weight"][:4096]
    t.update(real_tensors(gemma3_path, ["blk.0.ffn_down.weight", "blk.3.attn_output.weight"]))
    return t


@pytest.mark.parametrize("T", GGUF_QUANTIZES)
def test_bytes_equal_gguf(T, cases, real):
    qt = gguf.GGMLQuantizationType[T]
    rng = np.random.default_rng(7)
    inputs = {"cases": cases, "uniform": rng.uniform(-3, 1, (64, 1024)).astype(np.float32),
              **real}
    for name, x in inputs.items():
        ours = quantize_rows(x, T)
        with np.errstate(all="ignore"):          # gguf-py's 1/d on subnormal rows overflows
            ref = gguf.quants.quantize(x, qt)
        ref = np.ascontiguousarray(ref).view(np.uint8).reshape(ours.shape)
        assert np.array_equal(ours, ref), name


# ---- 3. llama.cpp: RMSE within 1.1x, and the same bytes --------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The fixture's F32 model, rebuilt from its parameters: name -> float32 matrix."""
    assert FIXTURE["model"] == mqf.MODEL and FIXTURE["overlay_seed"] == mqf.OVERLAY_SEED
    path = mqf.write_input(tmp_path_factory.mktemp("quantize") / "input.F32.gguf")
    assert mqf.sha256(path) == FIXTURE["f32_sha256"], "the synthetic input changed"
    return mqf.matrices(path)


@pytest.mark.parametrize("T", QUANTIZABLE)
def test_matches_llama_cpp(T, synthetic):
    assert set(FIXTURE["rmse"][T]) == set(synthetic)
    ratios = {}
    for name, x in synthetic.items():
        raw = quantize_rows(x, T)
        ours = mqf.rmse(gguf_dequantize(raw, T, x.shape), x)
        theirs = FIXTURE["rmse"][T][name]
        assert ours <= 1.1 * theirs, (name, ours, theirs)
        ratios[name] = ours / theirs if theirs else 1.0
        assert hashlib.sha256(raw.tobytes()).hexdigest() == FIXTURE["sha256"][T][name], name
    print(T, "RMSE ratio tinyllm/llama.cpp: max", max(ratios.values()))


# ---- 4. the bytes run through tinyllm's own kernels ----------------------------------------------
@pytest.mark.parametrize("T", ["Q4_K", "Q6_K"])
def test_kernels_read_our_bytes(T):
    rng = np.random.default_rng(3)
    W = (rng.standard_normal((96, 768)) * 0.05).astype(np.float32)
    raw = quantize_rows(W, T)
    w = QTensor(raw, FORMATS[T].ggml_type, W.shape[1])
    Wq = dequantize(raw, FORMATS[T].ggml_type)
    assert rel_rmse(Wq, W) <= REL_RMSE[T]
    x = rng.standard_normal((5, 768)).astype(np.float32)
    ref = x @ Wq.T
    tol = 1e-4 * np.abs(ref).max()
    np.testing.assert_allclose(linear(x, w, numerics="exact"), ref, atol=tol)          # batch
    np.testing.assert_allclose(linear(x[0], w, numerics="exact"), ref[0], atol=tol)    # one token
    assert np.array_equal(w.rows([0, 95, 7]), Wq[[0, 95, 7]])        # embedding lookup

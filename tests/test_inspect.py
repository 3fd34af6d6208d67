"""`tinyllm inspect`: the tensor table adds up to the file, and a block laid open field by
field rebuilds exactly what gguf-py dequantizes from those bytes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from conftest import run_cli
from tinyllm.errors import TinyLLMError
from tinyllm.gguf_file import GGUFFile
from tinyllm.tools.inspect import block_bytes, block_view, find_tensor, reference_values, summarize
from tinyllm.quant import FORMATS, supported_types

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from synthetic_gguf import write_model  # noqa: E402

MODELS = {"smollm2": ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
          "gemma3": ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"}


def gguf_dequantize(raw: np.ndarray, type_name: str) -> np.ndarray:
    return np.asarray(quants.dequantize(raw, GGMLQuantizationType[type_name]), np.float32).reshape(-1)


def assert_bits_equal(a: np.ndarray, b: np.ndarray):
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    assert (a.view(np.uint32) == b.view(np.uint32)).all()


def check_block(v, raw, type_name):
    """The view's values are levels[codes] and equal gguf-py's dequantization of the bytes."""
    f = FORMATS[type_name]
    assert v.values.shape == (f.block_size,)
    assert_bits_equal(v.values, gguf_dequantize(raw, type_name))
    for s in v.subs:
        # every code is one of the sub-block's 2^bits levels
        assert s.code_lo <= s.codes.min() and s.codes.max() < s.code_lo + len(s.levels)
        assert len(s.levels) & (len(s.levels) - 1) == 0


def _tensors_by_type():
    """(model, type, tensor) for one 2-D tensor of every type in each real model."""
    out = []
    for model, path in MODELS.items():
        g = GGUFFile(path)
        seen = set()
        for t in g.tensors.values():
            if t.type_name not in seen and len(t.ne) == 2:
                seen.add(t.type_name)
                out.append((model, t.type_name, t.name))
    return out


CASES = _tensors_by_type()


def test_cases_cover_the_types_of_both_models():
    assert {(m, ty) for m, ty, _ in CASES} >= {("smollm2", "Q4_1"), ("smollm2", "Q8_0"),
                                              ("gemma3", "Q4_K"), ("gemma3", "Q6_K"),
                                              ("gemma3", "Q5_0"), ("gemma3", "Q8_0")}


@pytest.mark.parametrize("model,type_name,tensor", CASES)
def test_real_blocks_rebuild_gguf_dequantize(model, type_name, tensor):
    g = GGUFFile(MODELS[model])
    t = g.tensors[tensor]
    f = FORMATS[type_name]
    n_blocks = t.n_elements // f.block_size
    per_row = t.ne[0] // f.block_size
    for i in (0, 1, per_row + 3, n_blocks // 2 + 7, n_blocks - 1):
        raw = block_bytes(g, t, i)
        v = block_view(type_name, raw)
        check_block(v, raw, type_name)
        # block i is where the row-major order says: row i // per_row, its (i % per_row)-th block
        row = gguf_dequantize(np.asarray(g.raw(tensor)[i // per_row]), type_name)
        c0 = i % per_row * f.block_size
        assert_bits_equal(v.values, row[c0:c0 + f.block_size])


def test_k_quant_fields_are_the_documented_formula():
    """Q4_K: w = (d * sc_j) * q - (dmin * m_j), from the printed fields alone."""
    g = GGUFFile(MODELS["gemma3"])
    t = next(t for t in g.tensors.values() if t.type_name == "Q4_K")
    v = block_view("Q4_K", block_bytes(g, t, 5))
    assert len(v.subs) == 8 and all(len(s.levels) == 16 and len(s.codes) == 32 for s in v.subs)
    d, dmin = np.float32(v.fields["d"]), np.float32(v.fields["dmin"])
    for s in v.subs:
        assert 0 <= s.fields["sc"] < 64 and 0 <= s.fields["m"] < 64
        w = (d * np.float32(s.fields["sc"])) * s.codes.astype(np.float32) - dmin * np.float32(s.fields["m"])
        assert_bits_equal(w.astype(np.float32), s.values)


def _random_block(type_name: str, rng) -> np.ndarray:
    """Random bytes for one block, with its f16 scales set to ordinary finite values."""
    f = FORMATS[type_name]
    if f.block_size == 1:
        x = np.float32(rng.standard_normal() * 10.0 ** rng.integers(-5, 3))
        b = np.array([x], {"F32": np.float32, "F16": np.float16}.get(type_name, np.float32)).view(np.uint8)
        return b[2:].copy() if type_name == "BF16" else b
    raw = rng.integers(0, 256, f.type_size, dtype=np.uint8)
    scale_at = {"Q2_K": [80, 82], "Q3_K": [108], "Q6_K": [208], "Q4_1": [0, 2], "Q5_1": [0, 2],
                "Q4_K": [0, 2], "Q5_K": [0, 2]}.get(type_name, [0])
    for o in scale_at:
        raw[o:o + 2] = np.array([rng.standard_normal() * 0.01], np.float16).view(np.uint8)
    return raw


@pytest.mark.parametrize("type_name", supported_types())
def test_every_format_rebuilds_random_blocks(type_name):
    rng = np.random.default_rng(sum(map(ord, type_name)))
    for _ in range(20):
        raw = _random_block(type_name, rng)
        check_block(block_view(type_name, raw), raw, type_name)


@pytest.mark.parametrize("model", list(MODELS))
def test_table_adds_up_to_the_file(model):
    g = GGUFFile(MODELS[model])
    s = summarize(g)
    assert s.tensor_bytes + s.padding_bytes == s.file_bytes - s.header_bytes
    assert s.tensor_bytes == s.file_bytes - s.header_bytes     # these files have no gaps
    assert sum(e["bytes"] for e in s.by_type.values()) == s.tensor_bytes
    assert sum(e["count"] for e in s.by_type.values()) == len(g.tensors)
    assert s.n_params == sum(int(np.prod(t.ne)) for t in g.tensors.values())
    emb = next(t for t in s.tensors if t.name == "token_embd.weight")
    assert emb.shape == tuple(reversed(g.tensors["token_embd.weight"].ne))   # (n_vocab, n_embd)


def test_cli_table_and_json(smollm2_path):
    r = run_cli("inspect", "smollm2-135m", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["file_bytes"] == Path(smollm2_path).stat().st_size
    assert d["tensor_bytes"] + d["padding_bytes"] + d["header_bytes"] == d["file_bytes"]
    assert set(d["by_type"]) == {"Q4_1", "Q8_0", "F32"}
    r = run_cli("inspect", smollm2_path)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("token_embd.weight"))
    assert line.split()[1:5] == ["Q8_0", "49152", "x", "576"]
    assert f"file        {d['file_bytes']:,} bytes" in r.stdout


def test_cli_block_output(gemma3_path):
    g = GGUFFile(gemma3_path)
    t = next(t for t in g.tensors.values() if t.type_name == "Q6_K")
    r = run_cli("inspect", gemma3_path, "--tensor", t.name, "--block", 9, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    want = gguf_dequantize(block_bytes(g, t, 9), "Q6_K")
    assert np.array_equal(np.array(d["values"], np.float32), want)
    assert len(d["sub_blocks"]) == 16 and all(len(s["levels"]) == 64 for s in d["sub_blocks"])
    r = run_cli("inspect", gemma3_path, "--tensor", t.name, "--block", 9)
    assert r.returncode == 0, r.stderr
    assert "w = (d * sc_j) * (q - 32)" in r.stdout and "sub-block 15 (elements 240..255)" in r.stdout


def test_ref_gives_the_original_values_and_the_error(tmp_path):
    """A Q4_0 copy of a synthetic F32 model against that F32 file: --ref shows the F32
    block and the rounding error."""
    from tinyllm.tools.quantize.model import quantize_model
    src = write_model(tmp_path / "f32.gguf", "llama", n_layer=1, n_embd=256, n_ff=512, n_vocab=2048, seed=3)
    dst = tmp_path / "q4_0.gguf"
    quantize_model(src, dst, "Q4_0")
    g, gref = GGUFFile(dst), GGUFFile(src)
    t = g.tensors["blk.0.ffn_up.weight"]
    assert t.type_name == "Q4_0"
    block = 8 * 3 + 2                          # row 3, columns 64..95 (8 blocks per row)
    ref = reference_values(str(src), t, block)
    assert np.array_equal(ref, gref.tensor("blk.0.ffn_up.weight")[3, 64:96])
    r = run_cli("inspect", dst, "--tensor", t.name, "--block", block, "--ref", src, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    err = np.array(d["values"]) - ref
    assert np.allclose(d["error"], err) and d["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)))
    assert 0 < d["rmse"] < 0.2 * np.sqrt(np.mean(ref.astype(np.float64) ** 2))   # 4-bit rounding


def test_bad_tensor_and_block_are_one_line_errors(smollm2_path):
    g = GGUFFile(smollm2_path)
    with pytest.raises(TinyLLMError, match="close names: blk.0.attn_q.weight"):
        find_tensor(g, "blk.0.attn_q.weigth")
    r = run_cli("inspect", smollm2_path, "--tensor", "blk.0.attn_q.weigth")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "blk.0.attn_q.weight" in r.stderr
    r = run_cli("inspect", smollm2_path, "--tensor", "blk.0.attn_q.weight", "--block", 10368)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "10,368 blocks" in r.stderr
    r = run_cli("inspect", smollm2_path, "--tensor", "blk.0.attn_q.weight", "--block", -1)
    assert r.returncode == 2 and "out of range" in r.stderr

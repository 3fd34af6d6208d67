"""`tinyllm ladder` on a tiny synthetic F32 model: it quantizes, measures and writes its
table, and its numbers agree with the files and with `tinyllm perplexity`."""

from __future__ import annotations

import csv
import json
import os
import sys

import pytest

from conftest import FIXTURES, ROOT, run_cli
from tinyllm.errors import TinyLLMError
from tinyllm.gguf_file import GGUFFile

sys.path.insert(0, str(ROOT / "scripts"))
from synthetic_gguf import write_model  # noqa: E402

CTX = 64
TEXT = FIXTURES / "text" / "alice_ch1-3.txt"


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    d = tmp_path_factory.mktemp("ladder")
    src = write_model(d / "tiny.gguf", "llama", n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=2,
                      n_vocab=8192, seed=7)
    out = d / "out"
    r = run_cli("ladder", src, "--types", "Q8_0,Q4_K_M", "--windows", 1, "--ctx", CTX, "--out", out,
                "--threads", 1)
    assert r.returncode == 0, r.stderr
    return str(src), out, r


def test_ladder_writes_table_csv_json_and_plot(ladder):
    src, out, r = ladder
    for f in ("ladder.csv", "ladder.json", "ladder.png", "Q8_0.gguf", "Q4_K_M.gguf"):
        assert (out / f).is_file(), f
    assert (out / "ladder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads((out / "ladder.json").read_text())
    assert [row["type"] for row in d["rows"]] == ["F32 (src)", "Q8_0", "Q4_K_M"]
    assert d["source"] == src and d["source_quantized"] is False and d["windows"] == 1
    with open(out / "ladder.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["type"] for row in rows] == [row["type"] for row in d["rows"]]
    for c, j in zip(rows, d["rows"]):
        assert float(c["ppl"]) == pytest.approx(j["ppl"]) and float(c["kld_mean"]) == pytest.approx(j["kld_mean"])
    lines = r.stdout.splitlines()
    head = next(i for i, x in enumerate(lines) if x.startswith("type "))
    assert [x.split()[0] for x in lines[head + 1:head + 4]] == ["F32", "Q8_0", "Q4_K_M"]


def test_ladder_numbers_are_consistent(ladder):
    src, out, _ = ladder
    rows = {row["type"]: row for row in json.loads((out / "ladder.json").read_text())["rows"]}
    for row in rows.values():
        assert row["bytes"] == os.path.getsize(row["file"])
        assert row["mib"] == pytest.approx(row["bytes"] / 2**20)
        g = GGUFFile(row["file"])
        n_params = sum(t.n_elements for t in g.tensors.values())
        assert row["bpw"] == pytest.approx(8 * row["bytes"] / n_params)
        assert row["tokens"] == CTX - 1
        assert row["tg_tok_s"] > 0 and row["peak_rss_mib"] > 0
    assert GGUFFile(rows["Q4_K_M"]["file"]).tensors["blk.0.attn_q.weight"].type_name == "Q4_K"
    base = rows["F32 (src)"]
    assert base["file"] == src
    assert base["kld_mean"] == 0.0 and base["kld_max"] == 0.0 and base["same_top_p"] == 100.0
    assert base["ppl_delta_pct"] == 0.0
    # more bits, closer to the source
    assert base["bytes"] > rows["Q8_0"]["bytes"] > rows["Q4_K_M"]["bytes"]
    assert 0 < rows["Q8_0"]["kld_mean"] < rows["Q4_K_M"]["kld_mean"]
    for row in rows.values():
        assert row["ppl_base"] == pytest.approx(base["ppl"], rel=1e-12)


def test_ladder_perplexity_equals_tinyllm_perplexity(ladder):
    _, out, _ = ladder
    rows = json.loads((out / "ladder.json").read_text())["rows"]
    q4 = next(row for row in rows if row["type"] == "Q4_K_M")
    r = run_cli("perplexity", q4["file"], "--file", TEXT, "--ctx", CTX, "--windows", 1, "--json")
    assert r.returncode == 0, r.stderr
    # two processes: their kernels may be compiled afresh or loaded from numba's cache,
    # which can differ in the last bits (see test_kld.test_cli_kld_json)
    assert json.loads(r.stdout)["ppl"] == pytest.approx(q4["ppl"], rel=1e-4)


def test_cached_rungs_are_reused(ladder):
    from tinyllm.tools.ladder import quantized_file
    src, out, r = ladder
    before = os.stat(out / "Q8_0.gguf").st_mtime_ns
    assert quantized_file(src, out, "Q8_0") == str(out / "Q8_0.gguf")
    assert os.stat(out / "Q8_0.gguf").st_mtime_ns == before


def test_quantized_source_is_named_and_bad_types_are_errors(smollm2_path):
    from tinyllm.tools.ladder import is_quantized, parse_types, weight_type
    g = GGUFFile(smollm2_path)
    assert is_quantized(g) and weight_type(g) == "Q4_1"
    assert parse_types("q8_0, Q4_K_M,Q8_0") == ["Q8_0", "Q4_K_M"]
    with pytest.raises(TinyLLMError, match="Q9_K"):
        parse_types("Q8_0,Q9_K")
    r = run_cli("ladder", smollm2_path, "--types", "Q9_K")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_a_source_made_by_dequantizing_is_recognised(tmp_path):
    """An F16 file holding the dequantized weights of a Q4_0 model sits on 4-bit grids;
    the original random floats do not."""
    import numpy as np

    from tinyllm.tools.ladder import dequantized_bits, grid_levels
    from tinyllm.tools.quantize.model import quantize_model
    rng = np.random.default_rng(0)
    assert grid_levels(rng.standard_normal(16).astype(np.float32)) is None
    assert grid_levels(np.float32(0.013) * rng.integers(-128, 128, 16).astype(np.float32)) <= 256
    src = write_model(tmp_path / "f32.gguf", "llama", n_layer=1, n_embd=256, n_ff=512, n_vocab=2048, seed=5)
    quantize_model(src, tmp_path / "q4_0.gguf", "Q4_0")
    quantize_model(tmp_path / "q4_0.gguf", tmp_path / "f16.gguf", "F16")
    assert GGUFFile(tmp_path / "f16.gguf").tensors["blk.0.ffn_up.weight"].type_name == "F16"
    assert dequantized_bits(GGUFFile(src)) is None
    bits = dequantized_bits(GGUFFile(tmp_path / "f16.gguf"))
    assert bits is not None and min(bits) == 4 and max(bits) <= 8

"""The GGUF reader: every metadata value type, tensor views, alignment — checked
against files written by the reference writer (gguf.GGUFWriter) and against the
reference reader (gguf.GGUFReader) on the real model."""

import gguf
import numpy as np
import pytest

from tinyllm.gguf_file import GGUFFile


@pytest.mark.parametrize("alignment", [32, 64])
def test_every_metadata_type_and_tensor_views(tmp_path, alignment):
    path = tmp_path / "all.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment != 32:
        w.add_custom_alignment(alignment)
    V = gguf.GGUFValueType
    scalars = {"u8": (200, V.UINT8), "i8": (-100, V.INT8), "u16": (60000, V.UINT16), "i16": (-30000, V.INT16),
               "u32": (4_000_000_000, V.UINT32), "i32": (-2_000_000_000, V.INT32), "f32": (1.5, V.FLOAT32),
               "bool": (True, V.BOOL), "u64": (2**63 + 5, V.UINT64), "i64": (-(2**62), V.INT64),
               "f64": (3.141592653589793, V.FLOAT64), "str": ("héllo ✓", V.STRING)}
    for k, (v, t) in scalars.items():
        w.add_key_value(f"test.{k}", v, t)
    w.add_array("test.arr_i32", [1, -2, 3])
    w.add_array("test.arr_f32", [0.5, 1.5])
    w.add_array("test.arr_str", ["a", "", "日本語"])
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal((7,)).astype(np.float16)
    q = rng.integers(0, 256, size=(4, 2 * 34), dtype=np.uint8)      # 4 rows of 2 Q8_0 blocks
    w.add_tensor("a", a)
    w.add_tensor("b", b)
    w.add_tensor("q", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    g = GGUFFile(path)
    for k, (v, _) in scalars.items():
        got = g.metadata[f"test.{k}"]
        assert got == pytest.approx(v) if isinstance(v, float) else got == v, k
    assert g.metadata["test.arr_i32"].tolist() == [1, -2, 3]
    assert g.metadata["test.arr_f32"].tolist() == [0.5, 1.5]
    assert g.metadata["test.arr_str"] == ["a", "", "日本語"]
    assert g.alignment == alignment and g.data_start % alignment == 0
    np.testing.assert_array_equal(g.tensor("a"), a)
    np.testing.assert_array_equal(g.tensor("b"), b)
    assert g.tensors["q"].ne == (64, 4) and g.tensors["q"].type_name == "Q8_0"
    np.testing.assert_array_equal(g.raw("q"), q)
    # zero-copy: the arrays are views of the file map, not copies
    assert not g.tensor("a").flags.owndata and not g.raw("q").flags.writeable


def test_real_model_matches_reference_reader(smollm2_path):
    ours = GGUFFile(smollm2_path)
    ref = gguf.GGUFReader(smollm2_path)
    assert len(ours.tensors) == len(ref.tensors)
    for t in ref.tensors:
        mine = ours.tensors[t.name]
        assert mine.ggml_type == int(t.tensor_type)
        assert mine.ne == tuple(int(n) for n in t.shape)
        assert ours.data_start + mine.offset == t.data_offset
        assert mine.n_bytes == t.n_bytes
    for key in ("llama.block_count", "llama.rope.freq_base", "tokenizer.ggml.pre", "general.name"):
        assert ours.metadata[key] == ref.fields[key].contents()
    assert ours.metadata["tokenizer.ggml.tokens"] == ref.fields["tokenizer.ggml.tokens"].contents()
    assert ours.metadata["tokenizer.ggml.merges"][:100] == ref.fields["tokenizer.ggml.merges"].contents()[:100]
    np.testing.assert_array_equal(ours.tensor("output_norm.weight"), ref.get_tensor(
        [i for i, t in enumerate(ref.tensors) if t.name == "output_norm.weight"][0]).data)

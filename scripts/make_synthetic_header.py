"""Write a GGUF whose header is real and whose tensor data is a hole: a sparse file.

Only the header (metadata + tensor infos) is written; the file is then extended
with truncate() to the size the tensors would occupy, so a 4.7 GB model costs a
couple of MB of disk.  Good for anything that reads only the header: the memory
planner and Ollama's estimate (tinyllm/memory.py, tinyllm/tools/ollama.py).  Reading
tensor data gives zeros.

The model here is Qwen2.5-7B-Instruct as Ollama ships it (`qwen2.5:7b`, Q4_K_M),
the worked example of docs/ollama-memory.md §6:

    L=28, E=3584, H=28, Hkv=4, head_dim=128, V=152064 (padded vocab), F=18944

The Q4_K_M mix follows llama.cpp's llama_tensor_get_type (src/llama-quant.cpp):
Q4_K by default; Q6_K for `output`; Q6_K for attn_v and ffn_down in the layers
where use_more_bits(i, n) holds, i.e. the first n/8 layers, the last n/8, and
every third layer in between -- 14 of Qwen2.5-7B's 28.  Gemma-3-270M Q4_K_M
shows the same pattern (9 of 18 layers; there attn_v falls back to Q8_0 because
640 is not a multiple of 256).

    python scripts/make_synthetic_header.py /tmp/qwen2.5-7b-q4_k_m.gguf
"""

from __future__ import annotations

import os
import sys

import numpy as np
import gguf
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

QWEN25_7B = dict(n_layer=28, n_embd=3584, n_head=28, n_head_kv=4, head_dim=128,
                 n_vocab=152064, n_ff=18944, n_ctx_train=32768)


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's Q4_K_M rule for which layers get more bits in attn_v / ffn_down."""
    return (i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8
            or (i_layer - n_layer // 8) % 3 == 2)


def q4_k_m_type(name: str, i_layer: int, n_layer: int) -> T:
    if name == "output.weight":
        return T.Q6_K
    if name.endswith(("attn_v.weight", "ffn_down.weight")) and use_more_bits(i_layer, n_layer):
        return T.Q6_K
    if name.endswith(".weight") and "norm" not in name:
        return T.Q4_K
    return T.F32          # norms and biases stay f32


def qwen2_tensors(n_layer, n_embd, n_head, n_head_kv, head_dim, n_vocab, n_ff, **_):
    """(name, shape in numpy order [rows, cols], ggml type) for a Qwen2 model, in file order."""
    kv = n_head_kv * head_dim
    out = [("token_embd.weight", (n_vocab, n_embd), T.Q4_K)]
    for i in range(n_layer):
        layer = [
            ("attn_norm.weight", (n_embd,)),
            ("attn_q.weight", (n_head * head_dim, n_embd)), ("attn_q.bias", (n_head * head_dim,)),
            ("attn_k.weight", (kv, n_embd)), ("attn_k.bias", (kv,)),
            ("attn_v.weight", (kv, n_embd)), ("attn_v.bias", (kv,)),
            ("attn_output.weight", (n_embd, n_head * head_dim)),
            ("ffn_norm.weight", (n_embd,)),
            ("ffn_gate.weight", (n_ff, n_embd)), ("ffn_up.weight", (n_ff, n_embd)),
            ("ffn_down.weight", (n_embd, n_ff)),
        ]
        for short, shape in layer:
            name = f"blk.{i}.{short}"
            out.append((name, shape, q4_k_m_type(name, i, n_layer)))
    out.append(("output_norm.weight", (n_embd,), T.F32))
    out.append(("output.weight", (n_vocab, n_embd), T.Q6_K))
    return out


def tensor_nbytes(shape, ggml_type) -> int:
    block, size = GGML_QUANT_SIZES[ggml_type]
    return int(np.prod(shape)) // block * size


def write_sparse_gguf(path, arch: str, metadata: dict, tensors, tokens) -> int:
    """Header via gguf.GGUFWriter, then truncate() to full size.  Returns the file size."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in metadata.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_string(key, value)
    w.add_token_list(tokens)
    end = 0
    for name, shape, ggml_type in tensors:
        n = tensor_nbytes(shape, ggml_type)
        w.add_tensor_info(name, shape, np.dtype(np.float32), n, raw_dtype=ggml_type)
        end = gguf.GGUFWriter.ggml_pad(end, w.data_alignment) + n
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    header_end = w.fout[0].tell()
    w.close()
    size = gguf.GGUFWriter.ggml_pad(header_end, w.data_alignment) + end
    os.truncate(path, size)       # the hole: no data blocks are allocated
    return size


def write_qwen25_7b_q4_k_m(path) -> int:
    d = QWEN25_7B
    md = {
        "general.name": "Qwen2.5-7B-Instruct (synthetic header, no weights)",
        "general.file_type": 15,                      # LLAMA_FTYPE_MOSTLY_Q4_K_M
        "qwen2.block_count": d["n_layer"],
        "qwen2.context_length": d["n_ctx_train"],
        "qwen2.embedding_length": d["n_embd"],
        "qwen2.feed_forward_length": d["n_ff"],
        "qwen2.attention.head_count": d["n_head"],
        "qwen2.attention.head_count_kv": d["n_head_kv"],
        "qwen2.rope.freq_base": 1000000.0,
        "qwen2.attention.layer_norm_rms_epsilon": 1e-6,
        "tokenizer.ggml.model": "gpt2",
    }
    # Like the real file, no attention.key_length: head_dim comes from E / H = 128.
    tokens = [f"t{i}" for i in range(d["n_vocab"])]
    return write_sparse_gguf(path, "qwen2", md, qwen2_tensors(**d), tokens)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-7b-q4_k_m.synthetic.gguf"
    size = write_qwen25_7b_q4_k_m(out)
    st = os.stat(out)
    print(f"{out}: {size:,} bytes apparent, {st.st_blocks * 512:,} bytes on disk")

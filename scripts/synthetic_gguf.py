"""Write small random-weight GGUF models with gguf.GGUFWriter.

No real weights of qwen2 / qwen3 / Llama-3 ship offline, and real models have
widths (576, 640) that are not multiples of 256, so k-quants cannot be tested
on them.  These files have each architecture's real metadata keys and tensor
names, a real vocabulary borrowed from SmolLM2, and random weights whose scale
keeps activations in a realistic range.  llama.cpp and tinyllm then run the
same file and must agree.

    python scripts/synthetic_gguf.py ARCH OUT.gguf [--n-embd 256 --n-layer 2 ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gguf  # noqa: E402

from tinyllm.gguf_file import GGUFFile  # noqa: E402

ARCHS = ("llama", "llama3", "qwen2", "qwen3", "gemma3")


def write_model(path, arch: str = "llama", n_layer: int = 2, n_embd: int = 256, n_ff: int = 512,
                n_head: int = 4, n_head_kv: int = 2, head_dim: int | None = None, vocab_from: str | None = None,
                n_vocab: int | None = None, seed: int = 0, dtype=np.float32, metadata_override: dict | None = None):
    """Write a random-weight model. `vocab_from`: a GGUF whose gpt2 vocabulary is borrowed
    (default: SmolLM2 in models/). n_vocab truncates it (merges are filtered to match)."""
    rng = np.random.default_rng(seed)
    gg_arch = "llama" if arch == "llama3" else arch
    head_dim = head_dim or n_embd // n_head
    src = GGUFFile(vocab_from or str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    tokens = list(src.get("tokenizer.ggml.tokens"))
    ttypes = np.asarray(src.get("tokenizer.ggml.token_type"), dtype=np.int32)
    merges = list(src.get("tokenizer.ggml.merges") or [])
    if n_vocab:
        tokens, ttypes = tokens[:n_vocab], ttypes[:n_vocab]
        vocab = set(tokens)
        merges = [m for m in merges if "".join(m.split(" ")) in vocab and all(p in vocab for p in m.split(" "))]
    V = len(tokens)

    w = gguf.GGUFWriter(str(path), gg_arch)
    w.add_name(f"tinyllm synthetic {arch}")
    w.add_block_count(n_layer)
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6 if arch != "llama" else 1e-5)
    w.add_rope_freq_base({"llama": 10000.0, "llama3": 500000.0, "qwen2": 1000000.0,
                          "qwen3": 1000000.0, "gemma3": 1000000.0}[arch])
    if head_dim != n_embd // n_head or arch in ("qwen3", "gemma3"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(V)
    if arch == "gemma3":
        w.add_sliding_window(64)
    for k, v in (metadata_override or {}).items():
        w.add_key_value(k, v[0], v[1])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(src.get("tokenizer.ggml.pre", "smollm"))
    w.add_token_list(tokens)
    w.add_token_types(ttypes.tolist())
    w.add_token_merges(merges)
    w.add_bos_token_id(int(src.get("tokenizer.ggml.bos_token_id", 1)))
    w.add_eos_token_id(int(src.get("tokenizer.ggml.eos_token_id", 2)))
    w.add_add_bos_token(False)

    # Tensors are declared first and drawn one at a time while the file is written, so a
    # 1B-parameter model never sits in memory whole. Drawing order = declaration order,
    # so the random stream (and the file, byte for byte) does not depend on this.
    tensors = []   # (name, numpy shape, dtype, make)

    def add(name, shape, dt, make):
        tensors.append((name, shape, np.dtype(dt), make))

    def mat(name, rows, cols, scale=None):
        # std 1/sqrt(cols) keeps each output of a random matmul at unit scale
        s = scale if scale is not None else 1.0 / np.sqrt(cols)

        def make():
            a = rng.standard_normal((rows, cols))
            a *= s
            return a.astype(dtype)
        add(name, (rows, cols), dtype, make)

    def norm(name, n):
        add(name, (n,), np.float32, lambda: (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    # Tied models (qwen2, gemma3) reuse token_embd as the output head: unit-scale rows
    # would make every logit row peak at the input token, so rows get norm ~1 instead.
    mat("token_embd.weight", V, n_embd, 1.0 / np.sqrt(n_embd))
    norm("output_norm.weight", n_embd)
    if arch in ("llama3",):
        # Llama 3 rope scaling stores per-pair frequency divisors in rope_freqs.weight
        add("rope_freqs.weight", (head_dim // 2,), np.float32,
            lambda: np.linspace(1.0, 8.0, head_dim // 2).astype(np.float32))
    if arch in ("llama", "llama3", "qwen3"):
        mat("output.weight", V, n_embd)      # untied output head
    for i in range(n_layer):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", n_embd)
        mat(p + "attn_q.weight", n_head * head_dim, n_embd)
        mat(p + "attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(p + "attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(p + "attn_output.weight", n_embd, n_head * head_dim)
        if arch == "qwen2":
            for t, n in (("q", n_head), ("k", n_head_kv), ("v", n_head_kv)):
                add(p + f"attn_{t}.bias", (n * head_dim,), np.float32,
                    lambda n=n: (0.5 * rng.standard_normal(n * head_dim)).astype(np.float32))
        if arch in ("qwen3", "gemma3"):
            norm(p + "attn_q_norm.weight", head_dim)
            norm(p + "attn_k_norm.weight", head_dim)
        if arch == "gemma3":
            norm(p + "post_attention_norm.weight", n_embd)
            norm(p + "post_ffw_norm.weight", n_embd)
        norm(p + "ffn_norm.weight", n_embd)
        mat(p + "ffn_gate.weight", n_ff, n_embd)
        mat(p + "ffn_up.weight", n_ff, n_embd)
        mat(p + "ffn_down.weight", n_embd, n_ff)
    for name, shape, dt, _ in tensors:
        w.add_tensor_info(name, shape, dt, int(np.prod(shape)) * dt.itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, shape, dt, make in tensors:
        a = make()
        assert a.shape == shape and a.dtype == dt
        w.write_tensor_data(a)
    w.close()
    return path


# ---- a GGUF as data: record one file's metadata and tensor bytes, write it again ----------------
def describe_gguf(path) -> tuple[dict, dict]:
    """What rebuild_gguf needs to write `path` again: (spec, tensors).

    spec["metadata"]: [key, value type, array element type or None, value] in file order;
    spec["tensors"]: [name, ggml type, ne, sha256 of its bytes] in file order;
    tensors: name -> uint8 bytes shaped (*reversed(ne[1:]), bytes per row)."""
    import hashlib
    r = gguf.GGUFReader(str(path))
    meta = []
    for f in r.fields.values():
        if f.name.startswith("GGUF."):                  # header fields, not key-value pairs
            continue
        sub = f.types[-1].name if f.types[0] == gguf.GGUFValueType.ARRAY else None
        meta.append([f.name, f.types[0].name, sub, f.contents()])
    g = GGUFFile(str(path))
    spec, tensors = {"metadata": meta, "tensors": []}, {}
    for name, t in g.tensors.items():
        raw = np.array(g.raw(name))
        tensors[name] = raw.reshape(*t.ne[:0:-1], raw.shape[-1])
        spec["tensors"].append([name, t.type_name, [int(n) for n in t.ne],
                                hashlib.sha256(raw.tobytes()).hexdigest()])
    g.close()
    return spec, tensors


def rebuild_gguf(path, spec: dict, tensors: dict):
    """Write the file describe_gguf recorded, with gguf.GGUFWriter: same keys and values
    in the same order, same tensors (raw bytes, any ggml type) in the same order."""
    meta = {k: (vt, st, v) for k, vt, st, v in spec["metadata"]}
    w = gguf.GGUFWriter(str(path), meta["general.architecture"][2])   # writes that key first
    if "general.alignment" in meta:
        w.data_alignment = int(meta["general.alignment"][2])
    for key, (vtype, sub, val) in meta.items():
        if key != "general.architecture":
            w.add_key_value(key, val, gguf.GGUFValueType[vtype],
                            sub_type=gguf.GGUFValueType[sub] if sub else None)
    for name, type_name, *_ in spec["tensors"]:
        w.add_tensor(name, np.ascontiguousarray(tensors[name], np.uint8),
                     raw_dtype=gguf.GGMLQuantizationType[type_name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arch", choices=ARCHS)
    ap.add_argument("out")
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-ff", type=int, default=512)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-head-kv", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=None)
    ap.add_argument("--f16", action="store_true", help="store matrices as F16 instead of F32")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    write_model(a.out, a.arch, a.n_layer, a.n_embd, a.n_ff, a.n_head, a.n_head_kv, a.head_dim,
                seed=a.seed, dtype=np.float16 if a.f16 else np.float32)
    print(a.out)


if __name__ == "__main__":
    main()

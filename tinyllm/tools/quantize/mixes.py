"""Type mixes: which ggml type each tensor gets when a model is quantized to "Q4_K_M" etc.

A target like Q4_K_M is not one type but a recipe, the one llama.cpp's quantizer
follows (src/llama-quant.cpp, llama_tensor_get_type), re-derived here so the
files tinyllm writes have the same per-tensor types as llama.cpp's:

  1. Only matrices are quantized.  1-D tensors (every norm, biases, rope_freqs)
     stay as they are (F32): they are tiny, and an error in a norm scale hits
     every element of the activations it multiplies.
  2. Every matrix starts at the target's base type (Q4_K for Q4_K_S/Q4_K_M, ...).
  3. "Important layers get more bits".  The error a matrix adds to the output is
     not the same everywhere:
       * the output head (output.weight, or token_embd.weight when the model ties
         them) produces the logits directly, with nothing after it to wash the
         error out: Q6_K for every k-quant or legacy target (Q8_0 stays Q8_0);
       * attn_v: each value vector is copied as-is into every query's output,
         and with grouped-query attention one V head serves n_gqa query heads,
         so its error is shared by several heads while the matrix itself is
         small (n_head_kv * head_dim rows) -- more bits are cheap;
       * ffn_down: it writes straight into the residual stream, and its input
         (gate * up) is heavy-tailed, so its quantization error is the largest
         of the FFN matrices -- especially in the first and last layers, which
         (measured by llama.cpp's authors on LLaMA perplexity) dominate the
         total error;
       * attn_output in the low-bit mixes (Q2_K, Q3_K_M, Q3_K_L) for the same
         reason as ffn_down: it writes into the residual stream.
     The _M and _L mixes give attn_v / ffn_down more bits in "use_more_bits"
     layers: the first eighth, the last eighth, and every third layer between.
  4. Fallbacks: k-quants pack 256 values per super-block, so a matrix whose rows
     (ne[0]) are not a multiple of 256 -- SmolLM2's 576, Gemma 3's 640 -- takes
     the nearest 32-block type instead (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0,
     Q5_K -> Q5_1, Q6_K -> Q8_0), and F16 if even 32 does not divide the row.
     (Older llama.cpp versions sent Q2_K/Q3_K to IQ4_NL; the llama.cpp this is
     checked against, llama-cpp-python 0.3.36, uses Q4_0.)

Architectures: llama.cpp has no Gemma-specific rule for these targets.  Gemma (like
SmolLM2) ties its output head to token_embd, so token_embd gets the output rule
(Q6_K -> Q8_0 after the fallback, its rows being 640 wide); with 4 query heads per
K/V head its attn_v gets Q4_K under Q2_K.  Falcon, 70B llamas and 8-expert MoEs have
rules of their own, kept below for fidelity although tinyllm does not run them.

`choose_types(tensors, target, model)` applies all four in llama.cpp's order.
Checked tensor by tensor against llama.cpp's quantizer for every target on
SmolLM2-135M, Gemma 3 270M and a synthetic llama (tests/test_quantize_model.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# target -> (llama_ftype, the GGUF `general.file_type` value; base ggml type)
TARGETS: dict[str, tuple[int, str]] = {
    "F16": (1, "F16"), "BF16": (32, "BF16"), "Q8_0": (7, "Q8_0"),
    "Q4_0": (2, "Q4_0"), "Q4_1": (3, "Q4_1"), "Q5_0": (8, "Q5_0"), "Q5_1": (9, "Q5_1"),
    "Q2_K": (10, "Q2_K"),
    "Q3_K_S": (11, "Q3_K"), "Q3_K_M": (12, "Q3_K"), "Q3_K_L": (13, "Q3_K"),
    "Q4_K_S": (14, "Q4_K"), "Q4_K_M": (15, "Q4_K"),
    "Q5_K_S": (16, "Q5_K"), "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"),
}

# values per block: a row of ne[0] values must hold a whole number of blocks
BLOCK_SIZE = {"F32": 1, "F16": 1, "BF16": 1, "Q8_0": 32, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32,
              "Q5_1": 32, "IQ4_NL": 32, "Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256,
              "Q6_K": 256}
FLOAT_TYPES = ("F32", "F16", "BF16")

# 256-block type -> the 32-block type used when a row is not a multiple of 256
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

# Matrices that are never quantized although they are 2-D: tiny, or used in a way
# (lookups of positions, routing logits, convolution taps) where rounding hurts.
KEEP_SUBSTRINGS = ("_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj",
                   "ssm_conv1d", "shortconv.conv.weight", "attn_rel_b.weight", "time_mix_")
KEEP_NAMES = ("position_embd.weight", "token_types.weight")


def file_type(target: str) -> int:
    """The GGUF `general.file_type` (llama_ftype) of a target."""
    return TARGETS[target][0]


@dataclass
class ModelInfo:
    """The few hyper-parameters the mix rules look at."""
    arch: str
    n_layer: int
    n_head: int = 1
    n_head_kv: int = 1
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        """Query heads per K/V head (integer division, as llama.cpp's hparams.n_gqa())."""
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        # llama.cpp's LLM_TYPE_70B: an 80-layer llama with grouped-query attention
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv

    @classmethod
    def from_metadata(cls, md: dict) -> "ModelInfo":
        arch = str(md.get("general.architecture", ""))

        def first(key, default):          # scalars, or per-layer arrays (take layer 0)
            v = md.get(f"{arch}.{key}", default)
            try:
                return int(v[0])
            except (TypeError, IndexError):
                return int(v)
        n_head = first("attention.head_count", 1)
        return cls(arch, first("block_count", 0), n_head, first("attention.head_count_kv", n_head),
                   first("expert_count", 0))


# ---- the tensor's role ----------------------------------------------------------------------
def category(name: str) -> str:
    """token_embd, output, attn_qkv/kv_b/v/k/q/output, ffn_up/gate/down or other.
    Substring tests in llama.cpp's order ("attn_qkv" before "attn_v", ...)."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                     ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def is_attn_v_like(cat: str) -> bool:
    """Tensors that produce the values: V alone, or fused QKV / KV (share V's sensitivity)."""
    return cat in ("attn_v", "attn_qkv", "attn_kv_b")


def allows_quantization(name: str, ne) -> bool:
    """Matrices ending in "weight", except norms and the KEEP lists."""
    if len(ne) < 2 or all(n == 1 for n in ne[1:]):
        return False                      # 1-D (ggml_n_dims counts trailing 1s out)
    if not name.endswith("weight") or name in KEEP_NAMES:
        return False
    return not any(s in name for s in KEEP_SUBSTRINGS)


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """The first 1/8 of the layers, the last 1/8, and every third layer in between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def layer_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


# ---- the rules ------------------------------------------------------------------------------
def mix_type(target: str, base: str, cat: str, i: int, n: int, ne0: int, model: ModelInfo,
             tied: bool) -> str:
    """Type of one quantizable matrix under a k-quant or legacy target, before the fallback.
    i, n: the tensor's index among its kind (= its layer for attn_v / ffn_down) and their count."""
    falcon, moe8 = model.arch == "falcon", model.n_expert == 8
    if cat == "output" or (tied and cat == "token_embd"):
        # the output head: Q6_K, or Q8_0 when the base's blocks do not fit the row
        if falcon or ne0 % BLOCK_SIZE[base]:
            return "Q8_0"
        return base if base == "Q8_0" else "Q6_K"
    if cat == "token_embd":
        return base                       # an untied embedding is a lookup table: base type
    if is_attn_v_like(cat):
        t = base
        if target == "Q2_K":
            t = "Q4_K" if model.n_gqa >= 4 else "Q3_K"
        elif target == "Q3_K_M":
            t = "Q5_K" if i < 2 else "Q4_K"
        elif target == "Q3_K_L":
            t = "Q5_K"
        elif target in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            t = "Q6_K"
        elif target == "Q4_K_S" and i < 4:
            t = "Q5_K"
        if model.is_70b and t in ("Q3_K", "Q4_K"):
            t = "Q5_K"                    # 8 query heads per V head: V is 1/8 of Q's size
        return "Q8_0" if moe8 else t
    if cat == "attn_k":
        return "Q8_0" if moe8 else base
    if cat == "ffn_down":
        if target == "Q2_K":
            return "Q3_K"
        if target == "Q3_K_M":
            if i < n // 16:
                return "Q5_K"
            return "Q4_K" if not falcon or use_more_bits(i, n) else "Q3_K"
        if target == "Q3_K_L":
            return "Q4_K" if falcon else "Q5_K"
        if target == "Q4_K_M":
            if falcon:
                return "Q6_K" if i < n // 16 else "Q5_K" if use_more_bits(i, n) else "Q4_K"
            return "Q6_K" if use_more_bits(i, n) else base
        if target == "Q5_K_M" and use_more_bits(i, n):
            return "Q6_K"
        if target == "Q4_K_S" and not falcon and i < n // 8:
            return "Q5_K"
        return base
    if cat == "attn_output":
        if falcon:
            return "Q4_K" if target == "Q3_K_L" else base
        if moe8:
            return "Q5_K" if target in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M") else base
        return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(target, base)
    return base


def fallback(t: str, ne0: int, name: str = "") -> str:
    """A type whose blocks fit a row of ne0 values (step 4 of the module docstring)."""
    if ne0 % BLOCK_SIZE[t] == 0:
        return t
    if t not in FALLBACK:
        raise ValueError(f"{name}: row of {ne0} values does not fit {t} blocks of {BLOCK_SIZE[t]}")
    t = FALLBACK[t]
    return t if ne0 % BLOCK_SIZE[t] == 0 else "F16"


def choose_types(tensors, target: str, model: ModelInfo) -> list[str]:
    """tensors: [(name, ne (ggml order), current type name)] in file order -> a type per tensor.

    attn_v and ffn_down rules depend on the tensor's index among its kind; llama.cpp
    counts them walking the tensors sorted by (layer, name), so we do too."""
    fmt, base = TARGETS[target]
    names = [t[0] for t in tensors]
    tied = "output.weight" not in names
    cats = [category(n) for n in names]
    n_attn_v = sum(is_attn_v_like(c) for c in cats)
    walk = sorted(range(len(tensors)), key=lambda k: (layer_of(names[k]), names[k]))
    counters = {"attn_v": 0, "ffn_down": 0}
    out = [None] * len(tensors)
    for k in walk:
        name, ne, cur = tensors[k]
        if not allows_quantization(name, ne):
            out[k] = cur
            continue
        if base in FLOAT_TYPES:           # F16 / BF16: every matrix, no mix, no fallback
            out[k] = base
            continue
        cat = cats[k]
        kind = "attn_v" if is_attn_v_like(cat) else cat
        if kind == "attn_v":
            i, n = counters["attn_v"], n_attn_v
        elif kind == "ffn_down":
            i, n = counters["ffn_down"], model.n_layer
            if model.n_expert > 1:        # experts are not in layer order: read the layer
                i = layer_of(name)
        else:
            i, n = layer_of(name), model.n_layer
        out[k] = fallback(mix_type(target, base, cat, i, n, ne[0], model, tied), ne[0], name)
        if kind in counters:
            counters[kind] += 1
    return out


def choose_types_for_file(gguf, target: str) -> dict:
    """name -> type name for every tensor of an open tinyllm.gguf_file.GGUFFile."""
    infos = list(gguf.tensors.values())
    model = ModelInfo.from_metadata(gguf.metadata)
    types = choose_types([(t.name, t.ne, t.type_name) for t in infos], target, model)
    return {t.name: ty for t, ty in zip(infos, types)}

"""A decoder-only transformer read from GGUF: hyper-parameters, weights, forward pass.

One forward pass serves every supported family; what differs between them is
configuration read from the GGUF metadata and from which tensors exist:

    family   rope pairs  q/k norm  qkv bias  ffn gate    extra
    llama    adjacent    -         -         SiLU        rope_freqs (Llama 3 scaling) if present
    qwen2    halves      -         yes       SiLU
    qwen3    halves      yes       -         SiLU
    gemma3   halves      yes       -         GELU-tanh   x*sqrt(n_embd) embeddings, post-norms,
                                                         sliding-window layers with their own rope base

Shapes use T = tokens in this call, E = n_embd, H = n_head, Hkv = n_head_kv,
D = head_dim, F = n_ff, V = n_vocab.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields

import numpy as np

from . import heap
from .attention import attention
from .errors import TinyLLMError
from .gguf_file import GGUFFile
from .kvcache import KVCache
from .ops import geglu, rms_norm, rope, rope_cache, swiglu
from .quant import NUMERICS, QTensor
from .quant import linear as _linear, linears as _linears

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "gemma3")
# forward() runs the feed-forward block on at most this many tokens at a time: its
# [T, n_ff] activations are a prefill's largest scratch, and a bigger slice does not make
# the matmuls faster (measured: SmolLM2, 512-token prefill: peak -7 MiB, speed unchanged).
FFN_TOKENS = 128


@dataclass
class Config:
    arch: str
    n_layer: int
    n_embd: int                    # E, width of the residual stream
    n_ff: int                      # F, hidden width of the feed-forward block
    n_head: int                    # H, query heads
    n_head_kv: int                 # Hkv, key/value heads (grouped-query attention)
    head_dim: int                  # D of keys and queries
    head_dim_v: int                # D of values
    n_vocab: int
    n_ctx_train: int               # context length the model was trained for
    norm_eps: float = 1e-5
    rope_freq_base: float = 10000.0
    rope_dim: int = 0              # features rotated per head (<= head_dim)
    rope_neox: bool = True         # pairs are halves (neox) rather than adjacent (llama)
    rope_freq_scale: float = 1.0
    attn_scale: float = 0.0        # multiplies q.k; 1/sqrt(head_dim) unless the family says otherwise
    embed_scale: float = 1.0       # gemma multiplies embeddings by sqrt(E)
    ffn_act: str = "silu"          # gate activation: silu (SwiGLU) or gelu_tanh (GeGLU)
    sliding_window: int = 0        # cells a sliding-window layer attends to; 0 = none
    swa_layers: tuple = ()         # indices of sliding-window layers
    rope_freq_base_swa: float = 0.0
    post_norms: bool = False       # gemma's extra norms after attention and after the FFN

    @classmethod
    def from_gguf(cls, g: GGUFFile, runnable: bool = True) -> "Config":
        """The one reader of a GGUF's hyper-parameters.  runnable=False reads the shape of
        any architecture (what the memory ledger sizes), with per-layer arrays at their
        largest value; runnable=True also insists that forward() can run it."""
        arch = g.get("general.architecture")
        if arch is None:
            raise TinyLLMError(f"{g.path}: no general.architecture in the header")
        if runnable and arch not in SUPPORTED_ARCHS:
            raise TinyLLMError(f"{g.path}: architecture {arch!r} is not supported "
                               f"(supported: {', '.join(SUPPORTED_ARCHS)})")

        def count(key, default=None, lo=1, hi=2**31 - 1) -> int:
            v = g.get_int(f"{arch}.{key}", default, lo, hi)
            if isinstance(v, tuple):    # per-layer arrays (head_count_kv on some models)
                if runnable and len(set(v)) > 1:
                    raise TinyLLMError(f"{g.path}: per-layer {key} values are not supported")
                return max(v)
            return v

        def number(key, default=None) -> float:
            return g.get_float(f"{arch}.{key}", default) if runnable else default

        # every layer has tensors, so a block count beyond the tensor count is a lie
        n_layer = count("block_count", hi=max(1, len(g.tensors)))
        n_embd, n_head = count("embedding_length"), count("attention.head_count")
        head_dim = count("attention.key_length", max(1, n_embd // n_head))
        tokens = g.get("tokenizer.ggml.tokens")
        n_vocab = count("vocab_size", len(tokens) if isinstance(tokens, list) else 0, lo=0)
        window = count("attention.sliding_window", 0, lo=0)
        c = cls(
            arch=arch, n_layer=n_layer, n_embd=n_embd,
            n_ff=count("feed_forward_length"), n_head=n_head,
            n_head_kv=count("attention.head_count_kv", n_head),
            head_dim=head_dim, head_dim_v=count("attention.value_length", head_dim),
            n_vocab=n_vocab, n_ctx_train=count("context_length", 2048),
            norm_eps=number("attention.layer_norm_rms_epsilon", 1e-5),
            rope_freq_base=number("rope.freq_base", 10000.0),
            rope_dim=count("rope.dimension_count", head_dim, lo=0, hi=head_dim),
            rope_neox=arch != "llama",
            sliding_window=window,
            swa_layers=swa_layer_indices(n_layer, sliding_window_pattern(g, arch)) if window else (),
        )
        if runnable and g.get(f"{arch}.rope.scaling.type") == "linear":
            factor = number("rope.scaling.factor", 1.0)
            if factor <= 0:
                raise TinyLLMError(f"{g.path}: {arch}.rope.scaling.factor must be positive, got {factor}")
            c.rope_freq_scale = 1.0 / factor
        c.attn_scale = 1.0 / math.sqrt(c.head_dim)
        if arch == "gemma3":
            c.embed_scale = math.sqrt(n_embd)
            c.ffn_act = "gelu_tanh"
            c.post_norms = True
            c.rope_freq_base_swa = 10000.0   # local layers: base 10k; global ones: the metadata's
        return c

    def layer_window(self, il: int) -> int | None:
        return self.sliding_window if il in self.swa_layers else None



# Sliding-window patterns (llama.cpp's set_swa_pattern) when the GGUF has no
# `{arch}.attention.sliding_window_pattern`: Gemma 3 interleaves 5 local layers with 1 global.
SWA_PATTERN_DEFAULT = {"gemma2": 2, "gemma3": 6, "cohere2": 4}


def sliding_window_pattern(g: GGUFFile, arch: str):
    """The GGUF's pattern: an int n, or one bool per layer (see swa_layer_indices)."""
    key = f"{arch}.attention.sliding_window_pattern"
    pattern = g.get(key, SWA_PATTERN_DEFAULT.get(arch, 0))
    if isinstance(pattern, (np.ndarray, list)):
        return pattern
    return g.get_int(key, SWA_PATTERN_DEFAULT.get(arch, 0), lo=0)


def swa_layer_indices(n_layer: int, pattern) -> tuple:
    """Which layers use the sliding window: pattern n means layer il is local iff
    il % n < n - 1 (every n-th layer is global; Gemma 3: n = 6); one bool per layer
    means True = local; 0: none."""
    if isinstance(pattern, (np.ndarray, list, tuple)):
        return tuple(i for i, local in enumerate(pattern) if local)
    n = int(pattern or 0)
    return tuple(i for i in range(n_layer) if i % n < n - 1) if n > 0 else ()


@dataclass
class Layer:
    """One block's tensors, named as in the GGUF (blk.N.<name>.weight, <name>_bias: .bias)."""
    attn_norm: np.ndarray              # [E]
    attn_q: QTensor                    # [H*D, E]
    attn_k: QTensor                    # [Hkv*D, E]
    attn_v: QTensor                    # [Hkv*Dv, E]
    attn_output: QTensor               # [E, H*Dv]
    ffn_norm: np.ndarray               # [E]
    ffn_gate: QTensor                  # [F, E]
    ffn_up: QTensor                    # [F, E]
    ffn_down: QTensor                  # [E, F]
    attn_q_bias: np.ndarray | None = None      # qwen2 biases
    attn_k_bias: np.ndarray | None = None
    attn_v_bias: np.ndarray | None = None
    attn_q_norm: np.ndarray | None = None      # [D] qwen3/gemma3: RMSNorm of each head's q and k
    attn_k_norm: np.ndarray | None = None
    post_attention_norm: np.ndarray | None = None   # gemma3
    post_ffw_norm: np.ndarray | None = None


@dataclass
class Weights:
    token_embd: QTensor                # [V, E]
    output_norm: np.ndarray            # [E]
    output: QTensor                    # [V, E]; the same tensor as token_embd when tied
    layers: list = field(default_factory=list)
    rope_freqs: np.ndarray | None = None   # Llama 3 per-pair frequency divisors

    @classmethod
    def from_gguf(cls, g: GGUFFile, cfg: Config) -> "Weights":
        def load(name, required=True):
            """A 2-D tensor as a QTensor over the file's bytes; a vector (norm, bias) as float32."""
            if name not in g.tensors:
                if required:
                    raise TinyLLMError(f"{g.path}: missing tensor {name}")
                return None
            t = g.tensors[name]
            if len(t.ne) >= 2:
                return QTensor(g.raw(name), t.ggml_type, t.ne[0])
            if t.type_name == "F32":
                return g.tensor(name)
            return QTensor(g.raw(name), t.ggml_type, t.ne[0]).dequantize().reshape(-1)

        token_embd = load("token_embd.weight")
        w = cls(token_embd=token_embd, output_norm=load("output_norm.weight"),
                output=token_embd if "output.weight" not in g.tensors else load("output.weight"),
                rope_freqs=load("rope_freqs.weight", required=False))
        for i in range(cfg.n_layer):
            tensors = {}
            for f in fields(Layer):          # the field names are the GGUF's
                name = (f"blk.{i}.{f.name[:-5]}.bias" if f.name.endswith("_bias")
                        else f"blk.{i}.{f.name}.weight")
                tensors[f.name] = load(name, required=f.default is MISSING)
            w.layers.append(Layer(**tensors))
        return w


class Model:
    """Config + weights (memory-mapped) + KV cache: everything one conversation needs."""

    def __init__(self, path: str, n_ctx: int | None = None, kv_type: str = "f16", flash_attn: bool = True,
                 numerics: str = "llama"):
        if numerics not in NUMERICS:
            raise TinyLLMError(f"numerics {numerics!r}: expected one of {', '.join(NUMERICS)}")
        self.numerics = numerics       # what x looks like in the dot products (quant/__init__.py)
        self.gguf = GGUFFile(path)
        self.path = path
        self.cfg = Config.from_gguf(self.gguf)
        self.weights = Weights.from_gguf(self.gguf, self.cfg)
        # default 2048 cells, never more than the model was trained for
        self.n_ctx = n_ctx = min(2048, self.cfg.n_ctx_train) if n_ctx is None else int(n_ctx)
        if n_ctx <= 0:
            raise TinyLLMError(f"context length must be positive, got {n_ctx}")
        self.cache = KVCache(self.cfg.n_layer, self.cfg.n_head_kv, self.cfg.head_dim,
                             self.cfg.head_dim_v, n_ctx, kv_type,
                             windows=[self.cfg.layer_window(il) for il in range(self.cfg.n_layer)],
                             flash_attn=flash_attn)

    def matrix_types(self) -> list[str]:
        """The formats of the weight matrices: what the kernels multiply by (the norms'
        F32 vectors are only scaled by)."""
        return sorted({t.type_name for t in self.gguf.tensors.values() if len(t.ne) >= 2})

    def reset(self) -> None:
        self.cache.truncate(0)

    def forward(self, tokens, pos: int, all_logits: bool = False, numerics: str | None = None) -> np.ndarray:
        """numerics: this call's, else the model's (quant/__init__.py).  A call of more
        than one token gives its scratch back to the OS at the end (heap.py)."""
        logits = forward(self.cfg, self.weights, self.cache, tokens, pos, all_logits,
                         numerics or self.numerics)
        if len(tokens) > 1:
            heap.trim()
        return logits


def forward(cfg: Config, w: Weights, cache: KVCache, tokens, pos: int,
            all_logits: bool = False, numerics: str = "llama") -> np.ndarray:
    """Run tokens (at positions pos..pos+T-1) through the model, filling the KV cache.

    Returns logits [T, V] if all_logits else [V] for the last token.  Under numerics
    "llama" (the default) activations are rounded to 8 bits before every quantized product,
    as llama.cpp does; "decode" rounds them only in one-token steps, "exact" never
    (quant/activations.py).
    """
    T = len(tokens)

    def linear(x, w, out=None):    # y = x W^T, under this call's numerics (T == 1: a decode step)
        return _linear(x, w, out, decode=T == 1, numerics=numerics)

    def linears(x, *ws):           # [x W^T for W in ws]: in a decode step one pass for them all
        return _linears(x, *ws, decode=T == 1, numerics=numerics)

    H, Hkv, D = cfg.n_head, cfg.n_head_kv, cfg.head_dim
    positions = np.arange(pos, pos + T)
    rope_global = rope_cache(positions, cfg.rope_dim, cfg.rope_freq_base, w.rope_freqs, cfg.rope_freq_scale)
    rope_local = (rope_cache(positions, cfg.rope_dim, cfg.rope_freq_base_swa)
                  if cfg.swa_layers else None)

    x = w.token_embd.rows(tokens)                                      # [T, E]
    if cfg.embed_scale != 1.0:
        x *= np.float32(cfg.embed_scale)

    for il, L in enumerate(w.layers):
        window = cfg.layer_window(il)
        cos, sin = rope_local if window else rope_global

        # ---- attention: x += Wo . attention(rope(Wq h), rope(Wk h), Wv h),  h = norm(x)
        h = rms_norm(x, L.attn_norm, cfg.norm_eps)                     # [T, E]
        q, k, v = linears(h, L.attn_q, L.attn_k, L.attn_v)     # [T, H*D], [T, Hkv*D], [T, Hkv*Dv]
        del h                                   # freed before attention allocates: a lower peak
        if L.attn_q_bias is not None:
            q, k, v = q + L.attn_q_bias, k + L.attn_k_bias, v + L.attn_v_bias
        q, k, v = q.reshape(T, H, D), k.reshape(T, Hkv, D), v.reshape(T, Hkv, cfg.head_dim_v)
        if L.attn_q_norm is not None:
            q = rms_norm(q, L.attn_q_norm, cfg.norm_eps)                    # per head, over D
            k = rms_norm(k, L.attn_k_norm, cfg.norm_eps)
        q = rope(q, cos, sin, cfg.rope_neox)
        k = rope(k, cos, sin, cfg.rope_neox)
        cache.store(il, pos, k, v)
        n_kv = pos + T
        a = attention(q, cache.view(il, n_kv), pos, cfg.attn_scale, window, cache.flash_attn)
        a = linear(a.reshape(T, H * cfg.head_dim_v), L.attn_output)  # [T, E]
        if L.post_attention_norm is not None:
            a = rms_norm(a, L.post_attention_norm, cfg.norm_eps)
        x += a                                                         # [T, E], the residual stream

        # ---- feed-forward: x += W_down (act(W_gate h) * W_up h),  h = norm(x)
        h = rms_norm(x, L.ffn_norm, cfg.norm_eps)
        f = np.empty_like(x)                                           # [T, E]
        for t0 in range(0, T, FFN_TOKENS):        # [T, F] is a prefill's largest scratch: a slice at a time
            hs = h[t0:t0 + FFN_TOKENS]
            gate, up = linears(hs, L.ffn_gate, L.ffn_up)     # [t, F] each
            act = swiglu(gate, up) if cfg.ffn_act == "silu" else geglu(gate, up)   # act(gate) * up
            del gate, up
            linear(act, L.ffn_down, out=f[t0:t0 + FFN_TOKENS])  # [t, E]
        if L.post_ffw_norm is not None:
            f = rms_norm(f, L.post_ffw_norm, cfg.norm_eps)
        x += f

    x = x if all_logits else x[-1:]
    x = rms_norm(x, w.output_norm, cfg.norm_eps)
    logits = linear(x, w.output)                           # [T or 1, V]
    return logits if all_logits else logits[0]

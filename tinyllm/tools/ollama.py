"""What `ollama ps` would print for a model: Ollama's own memory arithmetic, per version.

tinyllm measures its own memory.  People also want to know what Ollama would
have shown for the same model, context and cache type, and Ollama's number is
not a measurement for most of its history: it is an *estimate* computed from
the GGUF header before the model is loaded.  The formula changed several times,
so the answer depends on the version:

    version band            engine          SIZE in `ollama ps` is
    <= 0.12.10 (GPU)        llama runner    estimate: min. memory + spare layer + weights + KV + graph
    <= 0.12.6  (CPU)        llama runner    estimate: spare layer + weights + KV + graph
    0.12.7-0.24 (CPU)       llama runner    estimate: weights + KV (no graph)
    0.12.11-0.24 (GPU)      llama runner    estimate: weights + KV + graph
    >= 0.30                 llama-server    sum of llama.cpp's "... buffer size = X MiB" log lines

Two more changes split the older bands, both checked against a real Ollama 0.5.4
on this machine's CPU (SmolLM2 Q4_1 at num_ctx 32768: `ollama ps` said 1.6 GB):

    0.9.3 (commit 10a8e04)    num_ctx is clamped to the model's context_length.
                              Before, a num_ctx beyond it is sized as asked.
    0.11.5 (commit 8f4ec9ab2) flash attention on the CPU.  Before, CPU-only Ollama
                              ignores OLLAMA_FLASH_ATTENTION, and with it
                              OLLAMA_KV_CACHE_TYPE: the cache stays f16.

"weights" here is Ollama's: every `blk.N.*` tensor plus output_norm plus
`output` -- or `token_embd` when the output is tied to it.  An untied
`token_embd` is never counted.  KV is counted at 2 / 1 / 0.5 bytes per element
(f16 / q8_0 / q4_0), and a quantized cache silently falls back to f16 unless
flash attention was switched on explicitly (OLLAMA_FLASH_ATTENTION=1).  The
"graph" is a per-architecture formula whose big term is the f32 attention-score
matrix llama.cpp needs *without* flash attention -- the estimate ignores flash
attention, so switching it on does not change SIZE before 0.30.

Sources (ollama/ollama, tags as named): fs/ggml/ggml.go GraphSize (v0.12.10,
v0.24.0; llm/ggml.go in v0.5.7), llm/memory.go estimateGPULayers (<= v0.12.10),
llm/server.go llamaServer.Load (v0.12.11+), llm/llama_server.go MemorySize
(v0.30.0), format/bytes.go HumanBytes.  The full study with worked numbers is
docs/ollama-memory.md; section numbers below (§n) refer to it.

Units: functions return bytes.  Ollama prints decimal units (1 GB = 10^9 B);
only format_ollama_ps() turns bytes into Ollama's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..kvcache import kv_format

MiB = 1 << 20

# Ollama's estimate: kvCacheBytesPerElement (fs/ggml/ggml.go).  It ignores the
# per-block scale, so q8_0 is 6% and q4_0 12.5% below what ggml allocates.
OLLAMA_KV_BYTES = {"f16": 2.0, "q8_0": 1.0, "q4_0": 0.5, "f32": 4.0}

DEFAULT_NUM_BATCH = 512        # api/types.go DefaultOptions; llama.cpp's n_ubatch stays 512 too
MINIMUM_MEMORY = {"cuda": 457 * MiB, "rocm": 457 * MiB, "metal": 512 * MiB}  # ml/device.go
GEMMA3_GLOBAL_EVERY = 6        # gemma3: every 6th layer attends globally (model_text.go)

# Architectures Ollama runs on its own Go engine (fs/ggml/ggml.go OllamaEngineRequired).
# From v0.12.0 their SIZE is a measured allocation, not the estimate.  The list grew
# over time; this is the set named in the study, good enough to attach a warning.
OLLAMA_ENGINE_ARCHS = frozenset({"gemma3", "gemma3n", "gptoss", "gpt-oss", "llama4", "mistral3",
                                 "qwen3", "qwen3moe", "qwen25vl", "qwen3vl", "qwen3vlmoe", "mllama"})


# ---- versions --------------------------------------------------------------------------

def parse_version(v) -> tuple:
    """'0.12.10' / 'v0.6.x' / (0, 6) -> (0, 12, 10) / (0, 6, 0).  'x' counts as 0."""
    if isinstance(v, tuple):
        return (tuple(v) + (0, 0, 0))[:3]
    parts = re.findall(r"\d+|x", str(v).lstrip("v"))
    nums = [0 if p == "x" else int(p) for p in parts][:3]
    if not nums:
        raise ValueError(f"not an Ollama version: {v!r}")
    return tuple(nums + [0] * (3 - len(nums)))


@dataclass(frozen=True)
class OllamaDefaults:
    first: str                 # first version with these defaults
    last: str                  # last version (inclusive)
    num_ctx: int               # per slot; v0.15.5+ depends on VRAM (see default_num_ctx)
    num_parallel: int          # OLLAMA_NUM_PARALLEL when unset
    flash_attn: str            # 'off' = off unless =1; 'auto' = llama.cpp decides (llama runner)
    note: str


# §4 of the study.  Sources: api/types.go DefaultOptions, envconfig/config.go,
# server/sched.go defaultParallel, server/routes.go modelOptions (tiers).
OLLAMA_DEFAULTS = (
    OllamaDefaults("0.2.0", "0.5.12", 2048, 4, "off",
                   "num_parallel auto: 4 if it fits on the GPU, else 1; CPU-only always 4"),
    OllamaDefaults("0.5.13", "0.6.6", 2048, 4, "off",
                   "OLLAMA_CONTEXT_LENGTH added (default 2048); num_parallel auto 4"),
    OllamaDefaults("0.6.7", "0.9.6", 4096, 2, "off",
                   "num_ctx 4096; num_parallel auto 2 (CPU-only: 2 without checking)"),
    OllamaDefaults("0.10.0", "0.13.3", 4096, 1, "off",
                   "num_parallel 1; FA on by default only for gpt-oss (0.11.8), qwen3 (0.12.4), "
                   "gemma3 (0.12.6) on the Ollama engine"),
    OllamaDefaults("0.13.4", "0.15.4", 4096, 1, "auto",
                   "llama runner uses llama.cpp FA auto; a quantized KV cache still needs "
                   "OLLAMA_FLASH_ATTENTION=1"),
    OllamaDefaults("0.15.5", "0.24.99", 4096, 1, "auto",
                   "num_ctx by total VRAM: <23 GiB (and CPU-only) 4096, 23-47 GiB 32768, "
                   ">=47 GiB 262144"),
    OllamaDefaults("0.30.0", "999", 4096, 1, "auto",
                   "llama-server with --flash-attn auto; num_ctx tiers as in 0.15.5"),
)


def ollama_defaults(version) -> OllamaDefaults:
    """The defaults row for an Ollama version, e.g. ollama_defaults('0.6.5').num_parallel == 4.

    Versions before 0.2.0 (no parallel slots) and the unstudied 0.25-0.29 gap raise
    ValueError rather than guess.
    """
    v = parse_version(version)
    for row in OLLAMA_DEFAULTS:
        if parse_version(row.first) <= v <= parse_version(row.last):
            return row
    raise ValueError(f"Ollama {version}: defaults not known (studied: 0.2.0-0.24, >=0.30)")


def describe_defaults(version, vram_bytes: int = 0) -> str:
    """One line for the UI: 'Ollama 0.6.5 would have used num_ctx 2048, num_parallel 4, ...'."""
    row = ollama_defaults(version)
    fa = {"off": "off unless OLLAMA_FLASH_ATTENTION=1", "auto": "auto"}[row.flash_attn]
    return (f"Ollama {version} would have used num_ctx {default_num_ctx(version, vram_bytes)}, "
            f"num_parallel {row.num_parallel}, flash attention {fa} ({row.note})")


def default_num_ctx(version, vram_bytes: int = 0) -> int:
    """Default num_ctx (per slot).  From v0.15.5 it depends on total VRAM (routes.go Serve)."""
    v = parse_version(version)
    row = ollama_defaults(v)
    if v >= (0, 15, 5):
        gib = vram_bytes / (1 << 30)
        return 262144 if gib >= 47 else 32768 if gib >= 23 else 4096
    return row.num_ctx


# ---- the header as Ollama reads it ------------------------------------------------------

@dataclass(frozen=True)
class OllamaModel:
    """The GGUF header facts Ollama's estimate uses (fs/ggml/ggml.go KV accessors, GroupLayers)."""
    arch: str
    block_count: int
    embedding_length: int
    head_count: tuple            # per layer (the key may be a scalar or an array)
    head_count_kv: tuple         # per layer
    key_length: int              # attention.key_length, else embedding_length / min(head_count)
    value_length: int
    vocab_size: int              # len(tokenizer.ggml.tokens) -- Qwen2.5 pads this to 152064
    context_length: int
    sliding_window: int          # 0 if none
    layer_bytes: tuple           # size of every blk.N group: weights, biases and norms
    output_bytes: int            # output_norm + (output, or token_embd if the output is tied)
    token_embd_bytes: int
    tensor_bytes: int            # every tensor (llama.cpp's model buffers hold all of them)
    tensor_bytes_padded: int     # ... each rounded up to the file's alignment, as in the file
    tied_output: bool

    @classmethod
    def from_gguf(cls, g) -> "OllamaModel":
        """Read a tinyllm.gguf_file.GGUFFile (or anything with .metadata and .tensors)."""
        md = g.metadata
        arch = md["general.architecture"]

        def key(name, default=None):
            return md.get(f"{arch}.{name}", default)

        n_layer = int(key("block_count"))

        def per_layer(v, default):
            if v is None:
                v = default
            if isinstance(v, (np.ndarray, list, tuple)):
                return tuple(int(x) for x in v)
            return (int(v),) * n_layer

        heads = per_layer(key("attention.head_count"), 0)
        heads_kv = per_layer(key("attention.head_count_kv"), heads)
        n_embd = int(key("embedding_length"))
        # EmbeddingHeadCountK/V: the explicit length if present, else E / min(heads).
        head_dim = n_embd // min([h for h in heads if h > 0] or [1])
        tokens = md.get("tokenizer.ggml.tokens")
        n_vocab = len(tokens) if tokens is not None else int(key("vocab_size", 0))

        # Tensors.GroupLayers: "blk.N.*" is layer N; anything else is grouped by its
        # first name component (token_embd, output_norm, output, ...).
        layers = [0] * n_layer
        groups: dict[str, int] = {}
        align = int(md.get("general.alignment", 32))
        total = padded = 0
        for t in g.tensors.values():
            parts = t.name.split(".")
            total += t.n_bytes
            padded += -(-t.n_bytes // align) * align
            if parts[0] == "blk" and len(parts) > 1 and parts[1].isdigit():
                layers[int(parts[1])] += t.n_bytes
            else:
                groups[parts[0]] = groups.get(parts[0], 0) + t.n_bytes
        tied = "output" not in groups
        output = groups.get("output_norm", 0) + (groups["token_embd"] if tied and "token_embd" in groups
                                                 else groups.get("output", 0))
        return cls(
            arch=arch, block_count=n_layer, embedding_length=n_embd,
            head_count=heads, head_count_kv=heads_kv,
            key_length=int(key("attention.key_length", head_dim)),
            value_length=int(key("attention.value_length", head_dim)),
            vocab_size=n_vocab, context_length=int(key("context_length", 0)),
            sliding_window=int(key("attention.sliding_window", 0) or 0),
            layer_bytes=tuple(layers), output_bytes=output,
            token_embd_bytes=groups.get("token_embd", 0),
            tensor_bytes=total, tensor_bytes_padded=padded, tied_output=tied,
        )

    @property
    def weights_bytes(self) -> int:
        """Weights as Ollama counts them: sum of blk.N + output layer (no untied token_embd)."""
        return sum(self.layer_bytes) + self.output_bytes

    @property
    def supports_flash_attention(self) -> bool:
        """SupportsFlashAttention: not gemma2, and K and V heads of the same size."""
        return self.arch != "gemma2" and self.key_length == self.value_length


# ---- KV cache -------------------------------------------------------------------------

CLAMP_NUM_CTX = (0, 9, 3)       # num_ctx clamped to the training context from here
CPU_FLASH_ATTENTION = (0, 11, 5)  # flash attention (and so a quantized KV cache) on the CPU


def effective_kv_type(model: OllamaModel, kv_type: str, flash_attn: str, version=(0, 24, 0),
                      device: str = "gpu") -> str:
    """The cache type Ollama really uses when OLLAMA_KV_CACHE_TYPE=kv_type.

    flash_attn is the OLLAMA_FLASH_ATTENTION setting: 'on' (=1), 'off' (=0) or
    'auto' (unset).  Up to v0.24 a quantized cache needs flash attention switched
    on *explicitly*: before v0.13.4 FA is simply off unless =1 (llm/memory.go,
    llm/server.go NewLlamaServer: "quantized kv cache requested but flash
    attention disabled"); from v0.13.4 the llama runner lets llama.cpp pick FA
    'auto' but still keeps f16 unless =1 (commit bd6c1d6).  From v0.30
    llama-server runs with --flash-attn auto, which resolves to on for CPU,
    Metal and recent CUDA, so only an explicit 'off' forces f16.
    Unknown types fall back to f16 (SupportsKVCacheType accepts f16, q8_0, q4_0).
    On the CPU there is no flash attention before v0.11.5, so no quantized cache either.
    """
    kv_type = (kv_type or "f16").lower()
    if kv_type not in ("f16", "q8_0", "q4_0"):
        return "f16"
    if kv_type == "f16" or not model.supports_flash_attention:
        return "f16"
    if device == "cpu" and parse_version(version) < CPU_FLASH_ATTENTION:
        return "f16"
    if parse_version(version) >= (0, 30, 0):
        return kv_type if flash_attn != "off" else "f16"
    return kv_type if flash_attn == "on" else "f16"


def is_gemma3_global(il: int) -> bool:
    """Ollama's gemma3 rule: layer il attends to the whole context iff (il+1) % 6 == 0."""
    return (il + 1) % GEMMA3_GLOBAL_EVERY == 0


def kv_estimate(model: OllamaModel, num_ctx: int, num_parallel: int = 1, kv_type: str = "f16",
                num_batch: int = DEFAULT_NUM_BATCH) -> list:
    """Per-layer KV bytes as Ollama's estimate counts them (GraphSize, fs/ggml/ggml.go v0.12.10).

    Each full-attention layer holds C = num_ctx * num_parallel cells of
    n_head_kv * (key_length + value_length) elements at OLLAMA_KV_BYTES[kv_type]
    (pass the *effective* type).  Gemma 3's sliding-window layers (5 of every 6)
    get num_parallel * sliding_window + batch cells instead; batch = min(num_ctx, num_batch).
    """
    bpe = OLLAMA_KV_BYTES[kv_type]
    C = num_ctx * num_parallel
    batch = min(num_ctx, num_batch)
    out = []
    for il in range(model.block_count):
        cells = C
        if model.arch == "gemma3" and model.sliding_window and not is_gemma3_global(il):
            cells = num_parallel * model.sliding_window + batch
        elements = cells * model.head_count_kv[il] * (model.key_length + model.value_length)
        out.append(int(elements * bpe))      # Go: uint64(float64(...) * bytesPerElement)
    return out


# ---- compute graph ----------------------------------------------------------------------

def graph_estimate(model: OllamaModel, num_ctx: int, num_parallel: int = 1, kv_type: str = "f16",
                   num_batch: int = DEFAULT_NUM_BATCH) -> tuple:
    """(partialOffload, fullOffload) bytes: Ollama's compute-graph estimate (§2).

    Source: fs/ggml/ggml.go GraphSize (v0.12.10, unchanged in v0.24.0; llm/ggml.go in
    v0.5.7), plus the fallback in llm/memory.go / llamaServer.Load.  With b the
    batch, C the total cells, E the width, H the most query heads, V the vocab:

      llama/llama4  full = max(4b(1 + 4E + C(1+H)), 4b(E+V))
      qwen2         full = max(4b(E+V), 4b(1 + 2E + C + C*H))
      gemma*        full = max(4b(E+V), 4b(2 + C + C*H + 2E + 2*Dk*H))
      other         partial = full = (H / min Hkv) * KV_total / 6

    The 4*b*C*H term is llama.cpp's f32 attention-score matrix (K*Q for all heads)
    and 4*b*C its mask: what a *non*-flash-attention graph needs.  Flash attention
    is not a parameter here (it only matters for gpt-oss), so FA on and off give
    the same SIZE -- the root of "ollama ps says more than nvidia-smi" (#6160).
    """
    E = model.embedding_length
    H = max(model.head_count)
    Hkv = max(model.head_count_kv)
    Dh = E // max(1, min(model.head_count))
    Dk = model.key_length
    V = model.vocab_size
    C = num_ctx * num_parallel
    b = min(num_ctx, num_batch)
    arch = model.arch
    if arch in ("llama", "llama4"):
        full = max(4 * b * (1 + 4 * E + C * (1 + H)), 4 * b * (E + V))
        partial = 4 * b * E + max(
            4 * b * (1 + E + max(C, E)) + E * E * 9 // 16 + 4 * C * (b * H + Dh * Hkv),
            4 * b * (E + V) + E * V * 105 // 128)
    elif arch == "qwen2":
        full = max(4 * b * (E + V), 4 * b * (1 + 2 * E + C + C * H))
        partial = max(4 * b * (E + V) + E * V * 105 // 128,
                      4 * (b * (1 + 2 * E + C * (1 + H)) + E * (1 + C)))
    elif arch in ("gemma", "gemma2", "gemma3", "gemma3n"):
        full = max(4 * b * (E + V), 4 * b * (2 + C + C * H + 2 * E + 2 * Dk * H))
        partial = max(4 * E * b + E * V * 105 // 128 + 4 * V * b,
                      4 * b * (2 * E + 1 + 2 * Dk * H + C + C * H) + 4 * Dk * C * 8
                      + E * Dk * H * 9 // 16)
        if arch == "gemma3n":
            full, partial = 4 * full, 4 * partial
    else:
        kv_total = sum(kv_estimate(model, num_ctx, num_parallel, kv_type, num_batch))
        gqa = H // max(1, min(model.head_count_kv))
        partial = full = gqa * kv_total // 6
    return partial, full


# ---- llama.cpp's real buffers (what Ollama >= 0.30 reports) -----------------------------

def pad(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def llama_server_buffers(model: OllamaModel, num_ctx: int, num_parallel: int = 1,
                         kv_type: str = "f16", flash_attn: bool = True, gpu: bool = False,
                         n_ubatch: int = DEFAULT_NUM_BATCH) -> dict:
    """The "... buffer size" lines llama.cpp would log, in bytes (§3 v0.30+, §7).

    Ollama >= 0.30 (llm/llama_server.go memoryParsingWriter / MemorySize) starts
    `llama-server -c num_ctx*np -np np -b 512 -ub 512 --flash-attn auto` and
    reports the sum of these lines.  Modelled after llama.cpp as vendored in
    Ollama v0.20 (PR #17046 and later):

    - model:   every tensor, as laid out in the file.  Fully offloaded to a GPU,
               token_embd stays in a CPU buffer, and only GPU buffers count.
    - KV:      per stream n_ctx_seq = pad256(num_ctx) cells (one stream per slot,
               Ollama passes -np so the cache is not unified), at ggml's real
               bytes per element (q8_0 34/32, q4_0 18/32).  Gemma 3 sliding-window
               layers keep min(n_ctx_seq, pad256(window + n_ubatch)) cells per stream.
    - compute: llama.cpp reserves a worst-case graph of n_tokens = min(n_ctx, n_ubatch).
               Without FA the f32 scores n_kv x n_tokens x H plus the f32 mask dominate:
               4*b*(4E + n_kv*(1+H)) (the same as Ollama's llama formula, exact in the
               study's check).  With FA, or when the vocab is large, the logits
               4*b*V plus one E-wide activation dominate: 4*b*(E+V).  Measured on
               this machine with llama-cpp-python these are within a few % of
               llama.cpp's figures (tests/fixtures/llama_cpp_buffers.json).
    - output:  the logits buffer, n_vocab floats per sequence (host memory: drops
               out when the model is fully offloaded).

    Not modelled: CPU "REPACK" copies of some weights (AVX2/NEON), the small
    CUDA_Host compute buffer of partial offload, and the mmap-overlap correction.
    """
    n_ctx_seq = pad(num_ctx, 256)
    b = min(n_ctx_seq, n_ubatch)
    E, V = model.embedding_length, model.vocab_size
    H = max(model.head_count)
    kv = 0
    for il in range(model.block_count):
        cells = n_ctx_seq
        if model.arch == "gemma3" and model.sliding_window and not is_gemma3_global(il):
            cells = min(n_ctx_seq, pad(model.sliding_window + n_ubatch, 256))
        n_kv_elements = model.head_count_kv[il] * (model.key_length + model.value_length)
        kv += kv_format(kv_type).row_bytes(n_kv_elements) * cells * num_parallel   # ggml_row_size
    if flash_attn:
        compute = 4 * b * (E + V)
    else:
        compute = max(4 * b * (4 * E + n_ctx_seq * (1 + H)), 4 * b * (E + V))
    model_bytes = model.tensor_bytes_padded - (model.token_embd_bytes if gpu else 0)
    output = 0 if gpu else 4 * V * num_parallel
    return {"model": model_bytes, "kv": kv, "compute": compute, "output": output}


# ---- SIZE per version band --------------------------------------------------------------

@dataclass(frozen=True)
class Band:
    key: str
    label: str
    device: str            # 'cpu', 'cuda', 'metal' or 'gpu' (CUDA or Metal alike)
    first: tuple
    last: tuple

    @property
    def clamps_num_ctx(self) -> bool:
        """num_ctx clamped to the model's context_length (v0.9.3+)."""
        return self.first >= CLAMP_NUM_CTX

    @property
    def spare_layer(self) -> bool:
        """llm/memory.go's "one layer worth of memory as a buffer" counted in SIZE."""
        return self.last <= (0, 12, 6) if self.device == "cpu" else self.last <= (0, 12, 10)

    @property
    def minimum_memory(self) -> bool:
        return self.device in ("cuda", "metal") and self.last <= (0, 12, 10)

    @property
    def graph(self) -> bool:
        """The compute-graph estimate counted in SIZE (dropped on CPU-only from v0.12.7)."""
        return not (self.device == "cpu" and self.first >= (0, 12, 7))


BANDS = (
    Band("cpu-0.9.2", "CPU-only <=0.9.2", "cpu", (0, 2, 0), (0, 9, 2)),
    Band("cpu-0.11.4", "CPU-only 0.9.3-0.11.4", "cpu", (0, 9, 3), (0, 11, 4)),
    Band("cpu-0.12.6", "CPU-only 0.11.5-0.12.6", "cpu", (0, 11, 5), (0, 12, 6)),
    Band("cpu-0.24", "CPU-only 0.12.7-0.24", "cpu", (0, 12, 7), (0, 24, 99)),
    Band("metal-0.9.2", "Metal <=0.9.2", "metal", (0, 2, 0), (0, 9, 2)),
    Band("metal-0.12.10", "Metal 0.9.3-0.12.10", "metal", (0, 9, 3), (0, 12, 10)),
    Band("cuda-0.9.2", "CUDA <=0.9.2", "cuda", (0, 2, 0), (0, 9, 2)),
    Band("cuda-0.12.10", "CUDA 0.9.3-0.12.10", "cuda", (0, 9, 3), (0, 12, 10)),
    Band("gpu-0.24", "GPU 0.12.11-0.24", "gpu", (0, 12, 11), (0, 24, 99)),
    Band("cpu-0.30", "CPU-only >=0.30", "cpu", (0, 30, 0), (999, 0, 0)),
    Band("gpu-0.30", "GPU >=0.30", "gpu", (0, 30, 0), (999, 0, 0)),
)
BAND = {b.key: b for b in BANDS}


def band_for(version, device: str = "cpu") -> Band:
    """The band that decides SIZE for this Ollama version on 'cpu', 'cuda' or 'metal'."""
    v = parse_version(version)
    for b in BANDS:
        dev_ok = b.device == device or (b.device == "gpu" and device in ("cuda", "metal"))
        if dev_ok and b.first <= v <= b.last:
            return b
    raise ValueError(f"Ollama {version} on {device}: not covered (studied: 0.2-0.24, >=0.30)")


@dataclass
class OllamaFigure:
    """One "Ollama would report X" answer, with the parts it was added up from (bytes)."""
    band: Band
    size: int                          # bytes; what /api/ps returns as `size`
    parts: dict = field(default_factory=dict)
    kv_type_used: str = "f16"
    basis: str = "estimate"            # 'estimate', 'llama.cpp buffers'
    notes: list = field(default_factory=list)

    @property
    def printed(self) -> str:
        """SIZE exactly as the `ollama ps` column shows it (decimal units)."""
        return format_ollama_ps(self.size)


def ollama_ps(model: OllamaModel, band, num_ctx: int, num_parallel: int = 1,
              kv_type: str = "f16", flash_attn: str = "auto",
              num_batch: int = DEFAULT_NUM_BATCH) -> OllamaFigure:
    """SIZE `ollama ps` would show for a fully loaded model (all layers on the device).

    band: a Band, its key, or pass band_for(version, device).
    flash_attn: OLLAMA_FLASH_ATTENTION as set: 'on', 'off' or 'auto' (unset).

    <= 0.12.10, GPU (llm/memory.go estimateGPULayers): per GPU, MinimumMemory
      (457 MiB CUDA/ROCm, 512 MiB Metal) + a spare layer (blk.0 + kv[0], "one layer
      worth of memory as a buffer") + all layers + KV + output layer + fullOffload graph.
    <= 0.12.6, CPU-only: the CPU is a pseudo-GPU with no minimum: spare layer +
      layers + KV + output + fullOffload (assuming the model fits in free RAM).
    0.12.7-0.24, CPU-only (commit 3258a89, verifyCPUFit): layers + KV + output only.
    0.12.11-0.24, GPU (llm/server.go llamaServer.Load, commit f560bd0): layers + KV
      + output + graph; minimum memory and spare layer only gate the fit.
    >= 0.30: llama_server_buffers() summed (GPU: the GPU buffers only).

    num_ctx is clamped to the model's context_length from v0.9.3 (per slot); before,
    a larger num_ctx is sized as asked.  On the CPU before v0.11.5 there is no flash
    attention, so a quantized cache stays f16 whatever the settings.
    """
    band = BAND[band] if isinstance(band, str) else band
    notes = []
    if model.context_length and num_ctx > model.context_length:
        if band.clamps_num_ctx:
            notes.append(f"num_ctx clamped to the model's {model.context_length} (Ollama >=0.9.3)")
            num_ctx = model.context_length
        else:
            notes.append(f"num_ctx {num_ctx} is beyond the model's {model.context_length}: "
                         f"Ollama <0.9.3 sizes it as asked")
    kv_used = effective_kv_type(model, kv_type, flash_attn, band.first, band.device)
    if kv_used != (kv_type or "f16").lower():
        if band.device == "cpu" and band.first < CPU_FLASH_ATTENTION:
            notes.append(f"no flash attention on the CPU before Ollama 0.11.5: "
                         f"{kv_type} KV and OLLAMA_FLASH_ATTENTION are ignored, the cache is {kv_used}")
        elif band.first < (0, 30, 0):
            notes.append(f"{kv_type} KV needs OLLAMA_FLASH_ATTENTION=1 here: Ollama uses {kv_used}")
        else:
            notes.append(f"{kv_type} KV needs flash attention: {kv_used}")

    if band.first >= (0, 30, 0):
        fa = flash_attn != "off" and model.supports_flash_attention
        parts = llama_server_buffers(model, num_ctx, num_parallel, kv_used, flash_attn=fa,
                                     gpu=band.device != "cpu", n_ubatch=num_batch)
        if band.device != "cpu":
            notes.append("all layers offloaded: only GPU buffers count (token_embd stays on CPU)")
        return OllamaFigure(band, sum(parts.values()), parts, kv_used, "llama.cpp buffers", notes)

    if model.arch in OLLAMA_ENGINE_ARCHS:
        notes.append(f"{model.arch} runs on the Ollama engine: from v0.12.0 SIZE is measured; "
                     "this estimate decided SIZE up to v0.11.x")
    kv = kv_estimate(model, num_ctx, num_parallel, kv_used, num_batch)
    _, graph_full = graph_estimate(model, num_ctx, num_parallel, kv_used, num_batch)
    parts = {"weights": model.weights_bytes, "kv": sum(kv)}
    if band.spare_layer:
        parts["spare layer"] = model.layer_bytes[0] + kv[0]
    if band.minimum_memory:
        parts["minimum"] = MINIMUM_MEMORY[band.device]
    if band.graph:
        parts["graph"] = graph_full
    return OllamaFigure(band, sum(parts.values()), parts, kv_used, "estimate", notes)


def ollama_report(model: OllamaModel, num_ctx: int, num_parallel: int = 1, kv_type: str = "f16",
                  flash_attn: str = "auto", bands=BANDS,
                  num_batch: int = DEFAULT_NUM_BATCH) -> list:
    """ollama_ps() for every band: the row set the memory table prints."""
    return [ollama_ps(model, b, num_ctx, num_parallel, kv_type, flash_attn, num_batch)
            for b in bands]


def figure_dict(fig: OllamaFigure) -> dict:
    """One band's figure as plain data, bytes throughout (for `tinyllm mem --json`)."""
    b = fig.band
    return {"band": b.key, "label": b.label, "device": b.device,
            "first": ".".join(map(str, b.first)), "last": ".".join(map(str, b.last)),
            "size": int(fig.size), "printed": fig.printed,
            "parts": {k: int(v) for k, v in fig.parts.items()},
            "kv_type_used": fig.kv_type_used, "basis": fig.basis, "notes": list(fig.notes)}


# ---- printing ---------------------------------------------------------------------------

def format_ollama_ps(n_bytes: int) -> str:
    """Bytes -> the SIZE text of `ollama ps` (format/bytes.go HumanBytes).

    Decimal units (KB = 1000 B).  Values of 10 or more are truncated to an integer
    ("20.64 GB" -> "20 GB"); below 10 they get one decimal with %.1f rounding
    ("8.96 GB" -> "9.0 GB", and 9.96 GB prints "10.0 GB"); whole values print
    without a decimal ("5 GB").
    """
    n = int(n_bytes)
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            value = n / scale
            break
    else:
        return f"{n} B"
    if value >= 10 or value == int(value):
        return f"{int(value)} {unit}"
    return f"{value:.1f} {unit}"

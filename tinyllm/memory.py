"""The memory plan: what a model should need (planned) and what the process uses (measured).

Planned, from the GGUF header alone -- no model run:

    weights   the tensors, memory-mapped: file-backed pages the kernel may drop and
              re-read, so they show up in RssFile, not RssAnon
    KV cache  per layer and cell: n_head_kv * (head_dim_k + head_dim_v) elements at the
              cache type's real size (f32 4, f16 2, q8_0 34/32, q4_0 18/32 bytes); allocated
              in chunks as the conversation grows; sliding-window layers keep only a ring
              of `sliding_window` cells
    scratch   activation buffers for a batch of tokens (scratch_bytes)
    runtime   Python + numpy + numba themselves, measured at start-up

Measured, from /proc/self/status, /proc/self/smaps_rollup and /proc/self/smaps
(psutil where /proc is missing, e.g. macOS): RSS split into anonymous memory
(KV, scratch, Python heap) and file-backed pages (the mapped weights, shared
libraries), swap, and the peak.

Every verb that loads a model checks the plan against the memory available first
(check_fits, through startup.check_plan).  tinyllm/tools/memory.py sets the plan and the
measurement beside what Ollama would report (`tinyllm mem`).  Units: bytes; printed in MiB.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace

from .ggml_types import GGMLQuantizationType

from .errors import TinyLLMError

MiB = 1 << 20

KV_CHUNK = 256               # the cache grows by this many cells at a time
# model.forward runs the feed-forward block on at most FFN_TOKENS tokens at a time
from .kvcache import kv_format  # noqa: E402
from .model import FFN_TOKENS, Config  # noqa: E402

# The model's shape (the dimensions memory depends on) is the engine's own Config, read
# with runnable=False: any architecture, per-layer arrays at their largest.
def model_shape(g) -> Config:
    return Config.from_gguf(g, runnable=False)


# ---- weights ----------------------------------------------------------------------------

def tensor_group(name: str) -> str:
    """token_embd / output / attention / ffn / norms / other, by GGUF tensor name."""
    if "norm" in name:
        return "norms"
    if name.startswith("token_embd"):
        return "token_embd"
    if name.startswith("output."):
        return "output"
    if ".attn_" in name:
        return "attention"
    if ".ffn_" in name:
        return "ffn"
    return "other"


def weights_by_type(g) -> dict:
    """Bytes of tensor data per ggml type name, largest first."""
    out: dict[str, int] = {}
    for t in g.tensors.values():
        name = GGMLQuantizationType(t.ggml_type).name
        out[name] = out.get(name, 0) + t.n_bytes
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def weights_by_group(g) -> dict:
    """Bytes of tensor data per tensor_group(); 'output' is absent when tied to token_embd."""
    out = {k: 0 for k in ("token_embd", "output", "attention", "ffn", "norms", "other")}
    for t in g.tensors.values():
        out[tensor_group(t.name)] += t.n_bytes
    return {k: v for k, v in out.items() if v or k in ("token_embd", "attention", "ffn")}


def metadata_object_bytes(g) -> int:
    """Anonymous memory of the header's string arrays once parsed into Python objects.

    The vocabulary (tokenizer.ggml.tokens, and merges for BPE models) becomes one
    Python str per entry: ~50 bytes of object header plus the text, plus an 8-byte
    list slot.  For Gemma 3's 262k tokens that is ~17 MiB -- more than its KV cache
    at a few thousand tokens.
    """
    total = 0
    for value in g.metadata.values():
        if isinstance(value, list):
            total += sys.getsizeof(value) + sum(sys.getsizeof(v) for v in value)
    return total


def object_bytes(root, exclude=()) -> int:
    """Deep size of a Python object graph (sys.getsizeof over everything reachable),
    not counting objects reachable from `exclude` (e.g. strings the metadata already
    holds).  numpy arrays count their own buffer only when they own it."""
    import gc
    seen = set()
    stack = list(exclude)
    while stack:                                      # mark what is already accounted for
        o = stack.pop()
        if id(o) not in seen:
            seen.add(id(o))
            stack.extend(r for r in gc.get_referents(o) if not isinstance(r, type))
    total, stack = 0, [root]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, type) or callable(o) and not hasattr(o, "__dict__"):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        stack.extend(gc.get_referents(o))
    return total


def tokenizer_object_bytes(g, tokenizer=None) -> int:
    """Anonymous memory of the tokenizer's own tables (token -> id, merge ranks, ...),
    beyond the metadata strings they share.  Built from the header if not given."""
    if tokenizer is None:
        from .tokenizer import Tokenizer
        try:
            tokenizer = Tokenizer.from_gguf(g)
        except TinyLLMError:
            return 0
    return object_bytes(tokenizer, exclude=(g.metadata,))


# The compiled kernels numba loads from its cache (machine code + dispatcher objects),
# when they are not measured: SmolLM2 (F32, Q4_1, Q8_0 + attention) measured 6 MiB.
KERNELS_ESTIMATE = 6 * 2**20


# ---- KV cache ---------------------------------------------------------------------------

def kv_row_bytes(kv_type: str, n_elements: int) -> int:
    """Bytes for n_elements of a cache type (kvcache.py's formats: quantized types store a
    scale per block of 32)."""
    f = kv_format(kv_type)
    if n_elements % f.block_size:
        raise TinyLLMError(f"KV cache type {kv_type} needs rows that are a multiple of {f.block_size}")
    return f.row_bytes(n_elements)


def kv_bytes_per_cell(shape, kv_type: str) -> int:
    """One cell (one position) of one layer: a key row and a value row."""
    return (kv_row_bytes(kv_type, shape.n_head_kv * shape.head_dim)
            + kv_row_bytes(kv_type, shape.n_head_kv * shape.head_dim_v))


def kv_cells(shape, n_ctx: int, n_tokens: int | None = None, chunk: int = KV_CHUNK,
             n_batch: int = 256) -> list:
    """Cells allocated in each layer.

    n_tokens None: the full context, n_ctx cells.  Otherwise the cache has grown
    to hold n_tokens, in steps of `chunk`: min(n_ctx, ceil(n_tokens / chunk) * chunk)
    (0 before the first token).  A sliding-window layer never needs more than its
    window plus one batch of new tokens (those attend to the window before them):
    a ring buffer of min(that, sliding_window + n_batch) cells.
    """
    full = n_ctx if n_tokens is None else min(n_ctx, -(-max(0, n_tokens) // chunk) * chunk)
    swa = set(getattr(shape, "swa_layers", ()) or ())
    window = getattr(shape, "sliding_window", 0) or 0
    return [min(full, window + n_batch) if (il in swa and window) else full for il in range(shape.n_layer)]


def kv_cache_bytes(shape, n_ctx: int, kv_type: str = "f16", n_tokens: int | None = None,
                   chunk: int = KV_CHUNK) -> int:
    """tinyllm's KV cache in bytes: sum over layers of cells * kv_bytes_per_cell.

    Example, SmolLM2-135M at n_ctx 2048, f16: 30 layers * 2048 cells * 3 heads *
    (64 + 64) * 2 bytes = 45 MiB; q8_0 is 34/64 of that.
    """
    return sum(kv_cells(shape, n_ctx, n_tokens, chunk)) * kv_bytes_per_cell(shape, kv_type)


# ---- scratch ----------------------------------------------------------------------------

def scratch_bytes(shape, n_batch: int, n_ctx: int, flash_attn: bool, all_logits: bool = False,
                  fa_tile: int = KV_CHUNK, n_kv: int | None = None) -> dict:
    """Activation buffers (all float32) for one forward call over T = n_batch tokens.

    They live only during the call: they come from malloc's heap, reused layer to
    layer, and Model.forward gives the free heap back at the end of the call
    (heap.py).  So they add to the *peak* resident memory, not to what stays
    resident between calls.

        x       [T, E]             residual stream
        xb      [T, max(E, H*Dv)]  normed input, then the concatenated attention heads
        xb2     [T, E]             attn_output / ffn_down result before the residual add
        q       [T, H*Dk]          queries
        k, v    [T, Hkv*Dk], [T, Hkv*Dv]   this batch's keys and values, before the cache
        att     flash attention off: [H, T, n_kv] scores for the whole visible context,
                n_kv = the tokens seen so far, at most n_ctx (min(n_ctx, window) if
                every layer is local): the buffer that grows with the context;
                flash attention on: [H, T, fa_tile] one tile of scores plus the running
                max and sum [H, T, 2] of the online softmax: independent of n_ctx
        att_kv  flash attention off only: the visible keys and values dequantized to
                float32 [n_kv, Hkv, Dk + Dv], the queries made contiguous for the
                matmul [T, H*Dk], and the causal mask and its negation (bytes, [T, n_kv] each)
        hb, hb2 [t, F]             FFN gate and up projections, t = min(T, FFN_TOKENS):
                                   the FFN runs on slices of the batch
        logits  [V] (last token only) or [T, V] with all_logits (perplexity)
        xq      the input of one matmul rounded to 8 bits (numerics "llama", quant/rows.py):
                a code a value plus, per block of 16 or 32, a scale and a code sum (float32,
                int32) and for Q4_1/Q4_K a min: at most 1.5 bytes a value, for the widest
                input, [T, max(E, H*Dv)] or the FFN's [t, F]

    Returns {name: bytes}.  The forward pass should allocate exactly these (once, at
    the largest batch it will run) so that the plan matches RssAnon.
    """
    T, E, F, V = n_batch, shape.n_embd, shape.n_ff, shape.n_vocab
    H, Hkv, Dk, Dv = shape.n_head, shape.n_head_kv, shape.head_dim, shape.head_dim_v
    swa = getattr(shape, "swa_layers", ()) or ()
    window = getattr(shape, "sliding_window", 0) or 0
    n_kv = min(n_ctx, n_kv or n_ctx)
    n_kv = min(n_kv, window) if (window and len(swa) == shape.n_layer) else n_kv
    f32 = 4
    classic = 0 if flash_attn else n_kv * Hkv * (Dk + Dv) + T * H * Dk + 2 * T * n_kv // f32
    sizes = {
        "x": T * E, "xb": T * max(E, H * Dv), "xb2": T * E,
        "q": T * H * Dk, "k": T * Hkv * Dk, "v": T * Hkv * Dv,
        "att": H * T * (fa_tile + 2) if flash_attn else H * T * n_kv, "att_kv": classic,
        "hb": min(T, FFN_TOKENS) * F, "hb2": min(T, FFN_TOKENS) * F,
        "logits": V * (T if all_logits else 1),
    }
    sizes = {name: n * f32 for name, n in sizes.items()}
    sizes["xq"] = 3 * max(T * max(E, H * Dv), min(T, FFN_TOKENS) * F) // 2
    return sizes


# ---- measured ---------------------------------------------------------------------------

@dataclass
class Measured:
    """Resident memory of a process, in bytes.  None = not available on this system."""
    rss: int                            # VmRSS: every resident page
    rss_anon: int | None = None         # RssAnon: heap, numpy arrays, KV cache, scratch
    rss_file: int | None = None         # RssFile: mapped files -- the weights, shared libraries
    rss_shmem: int | None = None
    swap: int | None = None             # VmSwap: anonymous pages pushed to swap
    peak_rss: int | None = None         # VmHWM: high-water mark of VmRSS
    pss: int | None = None              # smaps_rollup Pss: shared pages divided among sharers
    weights_resident: int | None = None  # resident pages of the model file's mapping
    source: str = "/proc"


def _proc_kb_fields(path: str) -> dict:
    out = {}
    with open(path) as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[name.strip()] = int(parts[0]) * 1024
    return out


def mapped_file_resident(path: str, pid="self") -> int:
    """Resident bytes of every mapping of `path` in /proc/PID/smaps (0 if not mapped)."""
    target = os.path.realpath(path)
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):       # a mapping header line
                fields = line.split(None, 5)
                inside = len(fields) == 6 and fields[5].strip() == target
            elif inside and first == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


def measured(pid="self", model_path: str | None = None) -> Measured:
    """Measure a process's memory now (default: this one).

    Linux: /proc/PID/status for VmRSS, RssAnon, RssFile, RssShmem, VmSwap, VmHWM;
    smaps_rollup for Pss; smaps for the resident part of model_path's mapping.
    Elsewhere (macOS): psutil's rss, and ru_maxrss for the peak of this process;
    the anon/file split is not available there.
    """
    status = f"/proc/{pid}/status"
    if os.path.exists(status):
        s = _proc_kb_fields(status)
        m = Measured(rss=s["VmRSS"], rss_anon=s.get("RssAnon"), rss_file=s.get("RssFile"),
                     rss_shmem=s.get("RssShmem"), swap=s.get("VmSwap"), peak_rss=s.get("VmHWM"))
        try:
            m.pss = _proc_kb_fields(f"/proc/{pid}/smaps_rollup").get("Pss")
        except OSError:
            pass
        if model_path:
            m.weights_resident = mapped_file_resident(model_path, pid)
        return m
    import psutil  # only where /proc is missing
    proc = psutil.Process(None if pid == "self" else int(pid))
    info = proc.memory_info()
    peak = None
    if pid == "self":
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = r if sys.platform == "darwin" else r * 1024   # bytes on macOS, KiB on Linux
    return Measured(rss=info.rss, peak_rss=peak, source="psutil")


def measure_runtime_baseline() -> "Measured":
    """Memory of the interpreter + numpy + numba with its compiler running, before any
    model is opened: anonymous (heaps) and file-backed (libLLVM and the other shared
    libraries, ~90 MiB resident).

    Call once at start-up, before the GGUF is opened (the parsed header is planned
    separately as metadata_objects), and pass the result to MemoryPlan / ledger() as
    runtime_baseline_bytes.  A cached kernel is loaded first, because numba's code
    generator (LLVM) only becomes resident when the first kernel is.
    """
    from . import jit
    jit.warm_runtime()
    jit.release_compiler_pages()      # as open_model does once the kernels are loaded
    return measured()


# ---- the plan and the ledger ------------------------------------------------------------

@dataclass
class MemoryPlan:
    """Planned memory for one model and settings, from the header alone (bytes)."""
    model_path: str
    shape: Config
    n_ctx: int
    kv_type: str
    n_batch: int
    flash_attn: bool
    n_tokens: int                       # tokens in the conversation: KV allocated for these
    kv_chunk: int
    weights_by_type: dict
    weights_by_group: dict
    kv_allocated: int                   # at n_tokens
    kv_full: int                        # at n_ctx
    scratch: dict
    file_bytes: int = 0                 # the whole mapped file: header + tensor data
    metadata_objects: int = 0           # metadata_object_bytes()
    tokenizer_objects: int = 0          # tokenizer_object_bytes()
    kernels: int = KERNELS_ESTIMATE     # compiled kernels loaded (measured by open_model)
    kernels_measured: bool = False
    runtime_baseline: int = 0           # anonymous part of the runtime
    all_logits: bool = False
    runtime_files: int = 0              # file-backed part of the runtime (shared libraries)

    @classmethod
    def from_gguf(cls, g, n_ctx: int, kv_type: str = "f16", n_batch: int = 32,
                  flash_attn: bool = True, n_tokens: int = 0, runtime_baseline_bytes: int = 0,
                  kv_chunk: int = KV_CHUNK, all_logits: bool = False, tokenizer=None,
                  kernels_bytes: int | None = None, count_tokenizer: bool = True) -> "MemoryPlan":
        """count_tokenizer=False: take the tokenizer's tables as the size of the metadata
        strings they index (the same order: 15.7 vs 17 MiB on Gemma 3) instead of walking
        them, which costs 0.3 s -- for the check before loading, where start-up time counts."""
        shape = model_shape(g)
        runtime_files = 0
        if isinstance(runtime_baseline_bytes, Measured):      # from measure_runtime_baseline()
            m = runtime_baseline_bytes
            runtime_baseline_bytes = m.rss_anon if m.rss_anon is not None else m.rss
            runtime_files = m.rss_file or 0
        return cls(
            model_path=g.path, shape=shape, n_ctx=n_ctx, kv_type=kv_type, n_batch=n_batch,
            flash_attn=flash_attn, n_tokens=n_tokens, kv_chunk=kv_chunk,
            weights_by_type=weights_by_type(g), weights_by_group=weights_by_group(g),
            kv_allocated=kv_cache_bytes(shape, n_ctx, kv_type, n_tokens, kv_chunk),
            kv_full=kv_cache_bytes(shape, n_ctx, kv_type, None, kv_chunk),
            scratch=scratch_bytes(shape, n_batch, n_ctx, flash_attn, all_logits, n_kv=n_tokens or n_ctx),
            file_bytes=g.file_size, metadata_objects=metadata_object_bytes(g),
            tokenizer_objects=(tokenizer_object_bytes(g, tokenizer) if count_tokenizer
                               else metadata_object_bytes(g)),
            kernels=KERNELS_ESTIMATE if kernels_bytes is None else max(0, kernels_bytes),
            kernels_measured=kernels_bytes is not None,
            runtime_baseline=runtime_baseline_bytes, all_logits=all_logits,
            runtime_files=runtime_files)

    def at(self, n_tokens: int) -> "MemoryPlan":
        """The same plan with the KV cache grown to hold n_tokens."""
        return replace(self, n_tokens=n_tokens, kv_allocated=kv_cache_bytes(
            self.shape, self.n_ctx, self.kv_type, n_tokens, self.kv_chunk),
            scratch=scratch_bytes(self.shape, self.n_batch, self.n_ctx, self.flash_attn,
                                  self.all_logits, n_kv=n_tokens or self.n_ctx))

    @property
    def weights(self) -> int:
        return sum(self.weights_by_type.values())

    @property
    def scratch_total(self) -> int:
        return sum(self.scratch.values())

    @property
    def anon(self) -> int:
        """Anonymous memory between forward calls: KV (as allocated) + metadata and
        tokenizer objects + compiled kernels + runtime."""
        return (self.kv_allocated + self.metadata_objects + self.tokenizer_objects + self.kernels
                + self.runtime_baseline)

    @property
    def rss(self) -> int:
        """Resident between calls, once every page of the model file has been touched."""
        return self.file_bytes + self.anon + self.runtime_files

    @property
    def peak(self) -> int:
        """Resident during a forward call over n_batch tokens: rss + the scratch buffers."""
        return self.rss + self.scratch_total


# ---- does it fit? ------------------------------------------------------------------------

def available_bytes() -> tuple[int | None, str]:
    """(bytes this process can still use, where that figure comes from).

    MemAvailable (/proc/meminfo) is the kernel's estimate of what can be handed out
    without swapping: free pages plus the page cache it can drop.  An address-space
    limit (`ulimit -v`, RLIMIT_AS) can be smaller: what is left of it is the limit
    minus this process's VmSize, and the mapped model file counts against it in full.
    (None, ...) when neither is known (not Linux, no limit)."""
    best, source = None, "unknown"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    best, source = int(line.split()[1]) * 1024, "MemAvailable"
    except OSError:
        pass
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            used = _proc_kb_fields("/proc/self/status").get("VmSize", 0)
            left = max(0, soft - used)
            if best is None or left < best:
                best, source = left, f"left of the address-space limit (ulimit -v {soft // 1024})"
    except (ImportError, OSError, ValueError):
        pass
    return best, source


def load_bytes(plan: "MemoryPlan") -> int:
    """What loading and running the plan adds to this process at most: the mapped file
    (every page touched by the first forward pass), the KV cache grown to the whole
    context, scratch, the tokenizer's tables and the kernels.  The runtime (Python,
    numpy, numba) is already resident, so it is not counted again."""
    return (plan.file_bytes + plan.kv_full + plan.scratch_total + plan.metadata_objects
            + plan.tokenizer_objects + plan.kernels)


def check_fits(plan: "MemoryPlan", available: int | None = None, source: str = "") -> None:
    """Raise TinyLLMError, with both numbers and what to change, when the plan needs more
    memory than is available.  `run`, `chat`, `bench` (and `serve`) call this before
    loading; --no-mem-check skips it."""
    if available is None:
        available, source = available_bytes()
        if available is None:
            return                                          # nothing to compare with
    need = load_bytes(plan)
    if need <= available:
        return
    hints = []
    rest = need - plan.kv_full
    if rest < available:       # the cache is what does not fit: the largest context that does
        top = min(plan.n_ctx - 1, plan.shape.n_ctx_train or plan.n_ctx)   # no longer than trained for
        fits = [c for c in (2**k for k in range(8, 24)) if c <= top and
                rest + kv_cache_bytes(plan.shape, c, plan.kv_type, None, plan.kv_chunk) <= available]
        if fits:
            hints.append(f"--ctx {fits[-1]} would fit")
    if plan.kv_type in ("f32", "f16"):
        hints.append("--kv-type q8_0 or q4_0 stores the cache in about half or a quarter")
    hints.append("a smaller quantization of the model needs less for the weights")
    def mb(n):
        return f"{n / MiB:,.0f}"
    raise TinyLLMError(
        f"not enough memory: {os.path.basename(plan.model_path)} at --ctx {plan.n_ctx} "
        f"--kv-type {plan.kv_type} needs about {mb(need)} MiB (weights {mb(plan.file_bytes)}, "
        f"KV cache {mb(plan.kv_full)}, scratch {mb(plan.scratch_total)}) but {mb(available)} MiB "
        f"is available ({source}); {'; '.join(hints)}; --no-mem-check loads it anyway")

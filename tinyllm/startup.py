"""From a model name to a model ready for its first token: open, plan, warm the kernels.

Every verb (run, chat, bench, perplexity, warmup, ...) starts through `open_model`:

    model, tok = open_model("smollm2-135m", numerics="llama", progress=print)

1. open: resolve the name (pulling a registry model that is missing), map the GGUF,
   read its hyper-parameters and weights, size the KV cache;
2. warm: compile the numba kernels this model's formats need under its numerics, or
   load them from numba's disk cache; a cold compile reports each kernel on its own
   line through `progress`, so a first start on a Raspberry Pi is not a silent minute;
3. give LLVM's pages back (jit.release_compiler_pages) once nothing is left to compile.

The numerics default (what x looks like inside the dot products, quant/__init__.py) is
TINYLLM_ACTIVATIONS when it is set, else "llama".
"""

from __future__ import annotations

import os
import time

from . import jit
from .errors import TinyLLMError
from .quant import FORMATS, NUMERICS


def default_numerics() -> str:
    """TINYLLM_ACTIVATIONS (llama, decode or exact), else "llama"."""
    mode = os.environ.get("TINYLLM_ACTIVATIONS", "").strip().lower() or "llama"
    if mode not in NUMERICS:
        raise TinyLLMError(f"TINYLLM_ACTIVATIONS={mode!r}: expected one of {', '.join(NUMERICS)}")
    return mode


def _quiet(_line: str) -> None:
    pass


def warm_kernels(type_names, numerics: str = "llama", progress=_quiet) -> list[str]:
    """Compile (or load from the disk cache) the kernels for these tensor types under
    `numerics`, then attention's and the small ops'.  A kernel not in the cache is
    announced before its compile and timed after it.  Returns the names compiled."""
    if not jit.HAVE_NUMBA:
        progress("kernels: numpy fallback (numba not available)")
        return []
    from . import attention, ops
    shown = jit.CACHE_DIR.replace(os.path.expanduser("~"), "~", 1)
    compiled = []

    def step(name, dispatchers, run):
        cold = not jit.cache_is_warm(dispatchers)
        if cold:
            progress(f"kernels: compiling {name} (first run only; cached in {shown}) ...")
        t0 = time.perf_counter()
        run()
        if cold:
            compiled.append(name)
            progress(f"kernels: {name} compiled in {time.perf_counter() - t0:.1f} s")

    for fmt in (FORMATS[n] for n in sorted(set(type_names)) if n in FORMATS):
        for role, kernel in fmt.kernels(numerics).items():
            step(f"{fmt.name} {role}", [kernel],
                 lambda k=kernel, f=fmt: f.warmup(numerics, only=k))
    step("attention", attention.kernels(), attention.warmup)
    step("norms and rope", ops.kernels(), ops.warmup)
    return compiled


def open_model(model: str, n_ctx: int | None = None, kv_type: str = "f16", flash_attn: bool = True,
               numerics: str | None = None, threads: int | None = None, progress=_quiet,
               pull: bool = True, warm: bool = True, mem_check: bool = True):
    """MODEL name or path -> (Model, Tokenizer), its kernels warm (unless warm=False: then
    warm_model(model) before the first token).  model.kernels_bytes is what loading the
    compiled kernels cost in anonymous memory (the memory ledger).  mem_check=False
    (--no-mem-check) loads a model whose plan does not fit in the memory available."""
    from .model import Model
    from .registry import resolve
    from .tokenizer import Tokenizer

    path = resolve(model, pull_if_missing=pull, log=progress)
    if threads:
        jit.set_threads(threads)
    m = Model(path, n_ctx=n_ctx, kv_type=kv_type, flash_attn=flash_attn,
              numerics=numerics or default_numerics())
    check_plan(m, kv_type, flash_attn, progress, mem_check)
    tok = Tokenizer.from_gguf(m.gguf)
    m.kernels_bytes = None
    if warm:
        warm_model(m, progress)
    return m, tok


def check_plan(model, kv_type: str, flash_attn: bool, progress=_quiet, mem_check: bool = True) -> None:
    """Before any weight page is touched: warn about a context longer than the model was
    trained for, and refuse a memory plan (memory.py) that needs more than
    this machine has available (TinyLLMError with both numbers and what to change)."""
    from . import memory
    if model.n_ctx > model.cfg.n_ctx_train:
        progress(f"warning: --ctx {model.n_ctx} is longer than the {model.cfg.n_ctx_train} tokens "
                 f"{os.path.basename(model.path)} was trained on; past that its output degrades")
    if mem_check:
        memory.check_fits(memory.MemoryPlan.from_gguf(model.gguf, model.n_ctx, kv_type, 256, flash_attn,
                                                      count_tokenizer=False))


def warm_model(model, progress=_quiet) -> None:
    """The kernels of this model's formats under its numerics, then LLVM's pages let go."""
    from .memory import measured
    anon_before = measured().rss_anon
    warm_kernels(model.matrix_types(), model.numerics, progress)
    jit.release_compiler_pages()      # every kernel is loaded: LLVM's pages can go
    after = measured().rss_anon
    if after is not None and anon_before is not None:
        model.kernels_bytes = after - anon_before

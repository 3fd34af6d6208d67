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


# Rough compile seconds of each kind of kernel on a 2-core x86 (Gemma 3's cold start: 5.7 s
# for Q4_K's int8 prefill ... 0.8 s for Q8_0's decode), to share a cold start between processes.
COMPILE_COST = {"int8 prefill": 4.0, "prefill": 4.0, "int8 decode": 1.8, "float decode": 1.8,
                "attention": 6.0, "norms and rope": 6.0}
HELPER_BYTES = 400 * 2**20        # one compile helper's peak RSS (measured ~300 MiB: numba + LLVM)


def _steps(type_names, numerics: str) -> list:
    """[(name, dispatchers, run)]: each kernel this model needs, in the order they warm."""
    from . import attention, ops
    steps = []
    for fmt in (FORMATS[n] for n in sorted(set(type_names)) if n in FORMATS):
        for role, kernel in fmt.kernels(numerics).items():
            steps.append((f"{fmt.name} {role}", [kernel], lambda k=kernel, f=fmt: f.warmup(numerics, only=k)))
    steps.append(("attention", attention.kernels(), attention.warmup))
    steps.append(("norms and rope", ops.kernels(), ops.warmup))
    return steps


def warm_kernels(type_names, numerics: str = "llama", progress=_quiet, helpers: int = 0) -> list[str]:
    """Compile (or load from the disk cache) the kernels for these tensor types under
    `numerics`, then attention's and the small ops'.  A kernel not in the cache is
    announced before its compile and timed after it.  Returns the names compiled.

    numba compiles on one core.  With helpers > 0 and several kernels to compile, that
    many other processes (`python -m tinyllm.startup`: _compile_helper) compile a share
    of them into the same disk cache while this one compiles the rest, and this one then
    loads theirs from the cache (a kernel a helper failed to store is compiled here, as
    without helpers)."""
    if not jit.HAVE_NUMBA:
        progress("kernels: numpy fallback (numba not available)")
        return []
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

    steps = _steps(type_names, numerics)
    cold = [st for st in steps if not jit.cache_is_warm(st[1])]
    shares = _share([st[0] for st in cold], helpers + 1) if helpers and len(cold) > 1 else []
    procs = [p for p in (_start_helper(numerics, type_names, names, progress)
                         for names in shares[1:] if names) if p is not None]
    mine = set(shares[0]) if shares else None
    for st in steps:                     # this process's share (everything without helpers)
        if mine is None or st[0] in mine or st not in cold:
            step(*st)
    for proc, reader, names in procs:
        proc.wait()
        reader.join()
        compiled += [n for n in names if n in reader.done]
    for st in cold:                      # the helpers' share: loaded from the cache now
        if mine is not None and st[0] not in mine:
            step(*st)
    return compiled


def _share(names: list, n: int) -> list:
    """Split kernel names into n lists of about equal compile time (largest first, each
    to the least loaded list)."""
    cost = lambda name: next((c for k, c in COMPILE_COST.items() if name.endswith(k)), 2.0)
    bins = [[] for _ in range(n)]
    for name in sorted(names, key=cost, reverse=True):
        min(bins, key=lambda b: sum(map(cost, b))).append(name)
    return bins


def _start_helper(numerics: str, type_names, names: list, progress):
    """A `python -m tinyllm.startup` compiling `names`; a thread passes on its progress lines.
    None if it cannot start (then this process compiles its share)."""
    import subprocess
    import sys
    import threading
    cmd = [sys.executable, "-m", "tinyllm.startup", numerics, ",".join(sorted(set(type_names))), *names]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return None

    def relay():
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("done "):
                reader.done.add(line[5:])
            elif line:
                progress(line)

    reader = threading.Thread(target=relay, daemon=True)
    reader.done = set()
    reader.start()
    return proc, reader, names


def compile_helpers(spare_bytes: int | None) -> int:
    """How many helper processes a cold start may use: a core each beyond this one's, up
    to 3, and HELPER_BYTES each of the memory left once the model is loaded.
    TINYLLM_COMPILE_JOBS (processes in all, 1 = no helpers) overrides the core count."""
    jobs = os.environ.get("TINYLLM_COMPILE_JOBS", "").strip()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    n = (int(jobs) if jobs.isdigit() else min(cores, 4)) - 1
    fit = (spare_bytes or 0) // HELPER_BYTES
    return max(0, min(n, fit))


def _compile_helper(argv) -> None:
    """python -m tinyllm.startup NUMERICS TYPES NAME...: compile those kernels into the
    disk cache, printing the progress lines and "done NAME" for the parent."""
    numerics, types, names = argv[0], argv[1].split(","), set(argv[2:])
    for name, dispatchers, run in _steps(types, numerics):
        if name in names and not jit.cache_is_warm(dispatchers):
            print(f"kernels: compiling {name} (in a helper process) ...", flush=True)
            t0 = time.perf_counter()
            run()
            print(f"kernels: {name} compiled in {time.perf_counter() - t0:.1f} s", flush=True)
            print(f"done {name}", flush=True)


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
    model.spare_bytes = None            # memory left once loaded: what compile helpers may use
    if mem_check:
        plan = memory.MemoryPlan.from_gguf(model.gguf, model.n_ctx, kv_type, 256, flash_attn,
                                           count_tokenizer=False)
        available, source = memory.available_bytes()
        memory.check_fits(plan, available, source)
        if available is not None:
            model.spare_bytes = available - memory.load_bytes(plan)


def warm_model(model, progress=_quiet) -> None:
    """The kernels of this model's formats under its numerics, then LLVM's pages let go."""
    from .memory import measured
    anon_before = measured().rss_anon
    warm_kernels(model.matrix_types(), model.numerics, progress,
                 helpers=compile_helpers(getattr(model, "spare_bytes", None)))
    jit.release_compiler_pages()      # every kernel is loaded: LLVM's pages can go
    after = measured().rss_anon
    if after is not None and anon_before is not None:
        model.kernels_bytes = after - anon_before


if __name__ == "__main__":
    import sys
    _compile_helper(sys.argv[1:])

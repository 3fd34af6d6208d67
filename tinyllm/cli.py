"""The `tinyllm` command: pull, list, run, chat, tokenize, perplexity, bench.

Errors a user can cause (bad path, corrupt file, prompt too long, ...) are
TinyLLMError: one line on stderr, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

from . import heap
from .errors import TinyLLMError


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
    """The most resident memory this process has had (VmHWM), in MiB (2^20 bytes)."""
    from .memory import measured
    m = measured()
    return (m.peak_rss if m.peak_rss is not None else m.rss) / 2**20


# ---- loading ---------------------------------------------------------------------------

def open_model(args, quiet: bool = False):
    """MODEL name/path -> (Model, Tokenizer), kernels warm (startup.open_model)."""
    from .startup import open_model as start
    return start(args.model, n_ctx=getattr(args, "ctx", None), kv_type=getattr(args, "kv_type", "f16"),
                 flash_attn=getattr(args, "flash_attn", "on") == "on",
                 threads=getattr(args, "threads", None), progress=_quiet if quiet else log,
                 mem_check=not getattr(args, "no_mem_check", False))


def _quiet(_msg: str) -> None:
    pass


def cmd_warmup(args):
    """Compile the kernels a model needs now (once, unattended), so its first start is quick."""
    t0 = time.perf_counter()
    model, _ = open_model(args)
    log(f"kernels for {', '.join(model.matrix_types())} ({model.numerics} numerics) ready "
        f"in {time.perf_counter() - t0:.1f} s")


def check_threads(n: int) -> int:
    """--threads must be 1 .. the number of cores this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not 1 <= n <= cores:
        raise TinyLLMError(f"--threads must be between 1 and {cores} (the cores available here), got {n}")
    return n


def _threads_arg(p):
    p.add_argument("--threads", "-t", type=int, default=None, help="CPU threads (default: all cores)")


def _model_args(p, optional=False):
    if optional:
        p.add_argument("model", nargs="?", default=None, help="registry name or .gguf path (default: smollm2-135m)")
    else:
        p.add_argument("model", help="registry name or path to a .gguf file")
    p.add_argument("--ctx", "-c", type=int, default=None, help="context length in tokens (default 2048)")
    p.add_argument("--kv-type", default="f16", choices=["f32", "f16", "q8_0", "q4_0"],
                   help="KV cache storage type (default f16)")
    p.add_argument("--flash-attn", default="on", choices=["on", "off"],
                   help="on: tiled attention, no score matrix; off: classic attention (default on)")
    p.add_argument("--no-mem-check", action="store_true",
                   help="load even if the memory plan says it does not fit in available memory")
    _threads_arg(p)


def _sampling_args(p):
    # No argparse defaults: a flag left out falls back to the model's own values (its GGUF's
    # general.sampling.* keys, then the registry's), then to llama.cpp's defaults.
    d = "default: the model's, else %s"
    p.add_argument("--temp", type=float, default=None, help="temperature; 0 = greedy (" + d % "0.8)")
    p.add_argument("--top-k", type=int, default=None, help=d % "40")
    p.add_argument("--top-p", type=float, default=None, help=d % "0.95")
    p.add_argument("--min-p", type=float, default=None, help=d % "0.05")
    p.add_argument("--repeat-penalty", type=float, default=None, help=d % "1.0 (off)")
    p.add_argument("--repeat-last-n", type=int, default=None, help=d % "64")
    p.add_argument("--seed", type=int, default=None)


def _sampler(args, gguf=None):
    from .sampling import sampler_from_args
    return sampler_from_args(args, gguf)


# ---- verbs -----------------------------------------------------------------------------

def cmd_pull(args):
    from .registry import pull
    for name in args.names:
        pull(name, log=log)


def cmd_list(args):
    from .registry import list_models
    for name, path, present, desc in list_models():
        size = f"{os.path.getsize(path) / 2**20:8.1f} MiB" if present else "  (not pulled)"
        print(f"{name:<16} {size}  {desc}")


def cmd_run(args):
    from .generate import Session, Stats
    model, tok = open_model(args)
    session = Session(model, tok)
    ids = tok.encode(args.prompt, parse_special=args.special)
    stats = Stats()
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    for piece in session.generate(ids, _sampler(args, model.gguf), n_predict=args.n_predict, stats=stats):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    log(f"prefill: {stats.n_prompt} tokens, {stats.prefill_tok_s:.1f} tok/s | "
        f"decode: {stats.n_gen} tokens, {stats.decode_tok_s:.1f} tok/s | "
        f"peak RSS {peak_rss_mib():.0f} MiB | stop: {stats.stop_reason}")


def cmd_chat(args):
    from .chat import run_chat
    run_chat(args)


def cmd_tokenize(args):
    from .gguf_file import GGUFFile
    from .registry import resolve
    from .tokenizer import Tokenizer
    tok = Tokenizer.from_gguf(GGUFFile(resolve(args.model)))
    # no BOS unless --bos: the ids of the text itself
    print(json.dumps(tok.encode(args.text, add_bos=bool(args.bos), parse_special=args.special)))


def cmd_perplexity(args):
    from .tools.perplexity import perplexity, perplexity_kld
    args.ctx = 512 if args.ctx is None else args.ctx   # --ctx is the window length here
    if args.windows is not None and args.windows <= 0:
        raise TinyLLMError(f"--windows must be positive, got {args.windows}")
    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise TinyLLMError(f"cannot read {args.file}: {e.strerror}") from None
    if args.kld_base:           # two models that cannot be compared are refused before either loads
        from .gguf_file import GGUFFile
        from .registry import resolve
        from .tools.kld import check_same_vocabulary
        check_same_vocabulary(GGUFFile(resolve(args.model, pull_if_missing=True, log=log)),
                              GGUFFile(resolve(args.kld_base, pull_if_missing=True, log=log)))
    model, tok = open_model(args, quiet=args.json)
    if args.kld_base:
        from .tools.kld import format_summary
        base_args = argparse.Namespace(**{**vars(args), "model": args.kld_base})
        base, _ = open_model(base_args, quiet=True)
        stats = perplexity_kld(model, base, tok, text, args.ctx, max_windows=args.windows, progress=(
            None if args.json else lambda i, n, st: log(f"window {i}/{n}: mean KLD {st.kld.mean():.4g}")))
        s = dict(stats.summary(), windows=len(stats.kld) // (args.ctx - 1), ctx=args.ctx,
                 model=model.path, base=base.path)
        if args.json:
            print(json.dumps(s))
        else:
            print(f"KL divergence of {model.path} from base {base.path}\n"
                  f"over {s['tokens']} tokens in {s['windows']} windows of {args.ctx}:\n" + format_summary(s))
        return
    res = perplexity(model, tok, text, model.n_ctx,
                     progress=None if args.json else (lambda i, n, p: log(f"window {i}/{n}: ppl {p:.4f}")),
                     max_windows=args.windows)
    if args.json:
        print(json.dumps({"ppl": res.ppl, "tokens": res.n_scored}))
    else:
        print(f"perplexity {res.ppl:.4f} over {res.n_scored} tokens in {res.n_windows} windows of {res.ctx}")


def cmd_bench(args):
    import numpy as np

    from . import jit
    from . import memory
    from .tools.memory import ledger
    baseline = memory.measure_runtime_baseline()
    model, tok = open_model(args, quiet=args.json)
    rng = np.random.default_rng(0)
    # random ordinary tokens: the cost of a forward pass does not depend on which ids they are
    prompt = rng.integers(100, min(model.cfg.n_vocab, 30000), size=args.n_prompt).tolist()
    if args.n_prompt + args.n_gen > model.n_ctx:
        raise TinyLLMError(f"-p {args.n_prompt} + -n {args.n_gen} exceeds the context {model.n_ctx}")
    model.forward(prompt[:8], 0)                # touch every weight page once, as a warm-up
    model.reset()
    t0 = time.perf_counter()
    for start in range(0, len(prompt), args.n_batch):
        logits = model.forward(prompt[start:start + args.n_batch], start)
    t_pp = time.perf_counter() - t0
    pos, t0 = len(prompt), time.perf_counter()
    for _ in range(args.n_gen):
        tok_id = int(np.argmax(logits))
        logits = model.forward([tok_id], pos)
        pos += 1
    t_tg = time.perf_counter() - t0
    # the ledger's planned total next to what /proc says, for scripts/bench_memory.py
    led = ledger(model.gguf, model.n_ctx, args.kv_type, args.n_batch, args.flash_attn == "on",
                        n_tokens=pos, runtime_baseline_bytes=baseline, measure=True, tokenizer=tok,
                        kernels_bytes=model.kernels_bytes)
    res = {"pp_tok_s": args.n_prompt / t_pp, "tg_tok_s": args.n_gen / t_tg if args.n_gen else 0.0,
           "peak_rss_mib": (led.measured.peak_rss or led.measured.rss) / 2**20,
           "rss_mib": led.measured.rss / 2**20,
           "planned_rss_mib": led.plan.rss / 2**20, "planned_peak_mib": led.plan.peak / 2**20,
           "kernels": _kernels_in_use(), "threads": jit.get_threads()}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"prefill {res['pp_tok_s']:.1f} tok/s ({args.n_prompt} tokens) | decode {res['tg_tok_s']:.1f} "
              f"tok/s ({args.n_gen} tokens) | peak RSS {res['peak_rss_mib']:.0f} MiB "
              f"(ledger planned {res['planned_rss_mib']:.0f} MiB, now {res['rss_mib']:.0f} MiB) | "
              f"{res['kernels']} kernels, {res['threads']} threads")


def _kernels_in_use() -> str:
    """"numba/<SIMD path>" (quant/simd.py: vnni, avx2, dotprod, neon, generic) or "numpy"."""
    from . import jit
    if not jit.HAVE_NUMBA:
        return "numpy"
    from .quant import simd
    return f"numba/{simd.PATH}"


def cmd_mem(args):
    from . import memory
    from .tools.memory import ledger
    from .gguf_file import GGUFFile
    from .registry import resolve
    flash = args.flash_attn == "on"
    if not args.run:
        g = GGUFFile(resolve(args.model, pull_if_missing=True, log=log))
        n_ctx = 2048 if args.ctx is None else args.ctx
        if n_ctx <= 0:
            raise TinyLLMError(f"--ctx must be positive, got {n_ctx}")
        led = ledger(g, n_ctx, args.kv_type, args.n_batch, flash, n_tokens=n_ctx,
                            num_parallel=args.parallel, measure=False, **_ollama_band(args))
        print(json.dumps(led.to_dict(), indent=1) if args.json else led.table())
        return
    # --run: measure the runtime first (numba imported, no model yet), then load the
    # model, fill the context with a prompt, and put planned and measured side by side.
    import numpy as np
    baseline = memory.measure_runtime_baseline()
    model, tok = open_model(args, quiet=args.json)
    n_fill = min(args.fill or model.n_ctx, model.n_ctx)
    rng = np.random.default_rng(0)
    ids = rng.integers(100, min(model.cfg.n_vocab, 30000), size=n_fill).tolist()
    t0 = time.perf_counter()
    for start in range(0, n_fill, args.n_batch):
        model.forward(ids[start:start + args.n_batch], start)
    log(f"filled {n_fill} tokens in {time.perf_counter() - t0:.1f} s")
    led = ledger(model.gguf, model.n_ctx, args.kv_type, args.n_batch, flash, n_tokens=n_fill,
                        runtime_baseline_bytes=baseline, num_parallel=args.parallel,
                        measure=True, tokenizer=tok, kernels_bytes=model.kernels_bytes, **_ollama_band(args))
    print(json.dumps(led.to_dict(), indent=1) if args.json else led.table())


def _ollama_band(args) -> dict:
    """--ollama-version/--ollama-device -> memory.ledger's arguments (one band), checked."""
    if args.ollama_version is None:
        return {}
    from .tools import ollama
    try:
        ollama.band_for(args.ollama_version, args.ollama_device)
    except ValueError as e:
        raise TinyLLMError(str(e)) from None
    return {"ollama_version": args.ollama_version, "ollama_device": args.ollama_device}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tinyllm", description="Run quantized GGUF language models on the CPU.")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("pull", help="download a registry model into models/")
    p.add_argument("names", nargs="+")
    p.set_defaults(fn=cmd_pull)

    p = sub.add_parser("list", help="models in the registry and in models/")
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("run", help="continue a prompt")
    _model_args(p)
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-n", "--n-predict", type=int, default=128)
    p.add_argument("--special", action="store_true", help="parse control tokens in the prompt")
    _sampling_args(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("chat", help="interactive chat (default model: smollm2-135m)")
    _model_args(p, optional=True)
    p.add_argument("-n", "--n-predict", type=int, default=512, help="max tokens per reply")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--verbose", "-v", action="store_true", help="a memory line at every generated token")
    p.add_argument("--builtin-template", action="store_true",
                   help="use tinyllm's built-in chat format instead of the model's own template")
    _sampling_args(p)
    p.set_defaults(fn=cmd_chat)

    p = sub.add_parser("warmup", help="compile a model's kernels ahead of its first start")
    p.add_argument("model", help="registry name or path to a .gguf file")
    p.set_defaults(fn=cmd_warmup)

    p = sub.add_parser("tokenize", help="print token ids as JSON")
    p.add_argument("model")
    p.add_argument("text")
    p.add_argument("--special", action="store_true", help="parse control tokens such as <|im_start|>")
    p.add_argument("--bos", action="store_true", help="prepend BOS")
    p.set_defaults(fn=cmd_tokenize)

    p = sub.add_parser("perplexity", help="perplexity of a text file")
    _model_args(p)
    p.add_argument("--file", "-f", required=True)
    p.add_argument("--windows", type=int, default=None, help="score only the first N windows")
    p.add_argument("--kld-base", default=None, metavar="BASE",
                   help="also KL divergence from this base model (e.g. the F32 original), token by token")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_perplexity)

    p = sub.add_parser("mem", help="where the memory goes: tinyllm's plan (and measurement) beside Ollama's numbers")
    _model_args(p)
    p.add_argument("--parallel", type=int, default=1, help="Ollama's num_parallel for its figures")
    p.add_argument("--n-batch", type=int, default=256, help="tokens per prefill batch (scratch size)")
    p.add_argument("--run", action="store_true", help="load the model, fill the context, measure")
    p.add_argument("--fill", type=int, default=None, help="with --run: tokens to fill (default: --ctx)")
    p.add_argument("--ollama-version", default=None, metavar="X.Y.Z",
                   help="only the band of this Ollama version (default: every band)")
    p.add_argument("--ollama-device", default="cpu", choices=["cpu", "cuda", "metal"],
                   help="with --ollama-version: where that Ollama runs the model (default cpu)")
    p.add_argument("--json", action="store_true", help="the plan and each band's figures in bytes")
    p.set_defaults(fn=cmd_mem)

    p = sub.add_parser("bench", help="prefill and decode speed")
    _model_args(p)
    p.add_argument("-p", dest="n_prompt", type=int, default=128)
    p.add_argument("-n", dest="n_gen", type=int, default=64)
    p.add_argument("--n-batch", type=int, default=256, help="prompt tokens per forward pass")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_bench)

    # Verbs whose code lives in their own modules: each module has add_arguments(p) and run(args).
    for verb, module, help_ in (
            ("quantize", "tinyllm.tools.quantize.cli", "re-quantize a GGUF into another type (F16 ... Q2_K, _S/_M/_L mixes)"),
            ("inspect", "tinyllm.tools.inspect", "tensors, types and sizes of a GGUF; one quantized block laid open"),
            ("ladder", "tinyllm.tools.ladder", "quantize a model into each type and compare size, quality, speed"),
            ("serve", "tinyllm.serve", "Ollama's and OpenAI's HTTP APIs on 127.0.0.1:11434 (pip install 'tinyllm[serve]')")):
        p = sub.add_parser(verb, help=help_)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(fn=mod.run)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    heap.configure()                # scratch reused within a forward, given back after it
    try:
        if getattr(args, "threads", None) is not None:
            check_threads(args.threads)
        args.fn(args)
    except TinyLLMError as e:
        print(f"tinyllm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The memory ledger (`tinyllm mem`): tinyllm's plan and measurement (tinyllm/memory.py)
next to what Ollama would report for the same model, context and KV type (ollama.py).

Units: every tinyllm number is in MiB (2^20 bytes).  Ollama's numbers are printed the
way `ollama ps` prints them, in decimal GB/MB (10^9 / 10^6 bytes).  Table headers say
which is which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import ollama
from ..memory import KV_CHUNK, MiB, MemoryPlan, Measured, measured


def _mib(n) -> str:
    return "-" if n is None else f"{n / MiB:,.1f}"


def _mb(n) -> str:          # Ollama's decimal units, for the parts of its sums
    return f"{n / 1e6:,.1f}"


@dataclass
class Ledger:
    """Planned vs measured, and what Ollama would report for the same settings."""
    plan: MemoryPlan
    measured: Measured | None = None
    ollama: list | None = None          # OllamaFigure per version band
    ollama_settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The plan, the measurement (if any) and each band's figures, in bytes (`tinyllm mem --json`)."""
        p, m = self.plan, self.measured
        plan = {"model": p.model_path, "arch": p.shape.arch, "n_ctx": p.n_ctx, "kv_type": p.kv_type,
                "n_batch": p.n_batch, "flash_attn": p.flash_attn, "n_tokens": p.n_tokens,
                "file": p.file_bytes, "weights": p.weights, "weights_by_type": dict(p.weights_by_type),
                "weights_by_group": dict(p.weights_by_group), "kv_allocated": p.kv_allocated,
                "kv_full": p.kv_full, "scratch": dict(p.scratch), "metadata_objects": p.metadata_objects,
                "tokenizer_objects": p.tokenizer_objects, "kernels": p.kernels,
                "runtime_baseline": p.runtime_baseline, "runtime_files": p.runtime_files,
                "anon": p.anon, "rss": p.rss, "peak": p.peak}
        out = {"units": "bytes", "plan": plan,
               "ollama": {"settings": dict(self.ollama_settings),
                          "bands": [ollama.figure_dict(f) for f in self.ollama or ()]}}
        if m is not None:
            out["measured"] = {k: getattr(m, k) for k in ("rss", "rss_anon", "rss_file", "swap", "peak_rss",
                                                          "weights_resident") if hasattr(m, k)}
        return out

    def table(self) -> str:
        p, m = self.plan, self.measured
        sh = p.shape
        lines = [
            f"memory: {os.path.basename(p.model_path)} ({sh.arch}, {sh.n_layer} layers, "
            f"n_embd {sh.n_embd}, n_vocab {sh.n_vocab})",
            f"settings: n_ctx {p.n_ctx}, KV {p.kv_type}, n_batch {p.n_batch}, flash attention "
            f"{'on' if p.flash_attn else 'off'}, {p.n_tokens} tokens in the conversation",
            "tinyllm units: MiB (2^20 bytes)",
            "",
            f"{'':38}{'planned':>10}{'measured':>10}",
        ]

        def row(label, planned, meas=None, note=""):
            lines.append(f"{label:38}{_mib(planned):>10}{_mib(meas):>10}  {note}".rstrip())

        row("model file (memory-mapped)", p.file_bytes, m.weights_resident if m else None,
            "resident pages of the file" if m and m.weights_resident is not None else "")
        lines.append(f"  header {_mib(p.file_bytes - p.weights)}, tensors {_mib(p.weights)}")
        lines.append("  by type:  " + ", ".join(f"{k} {_mib(v)}" for k, v in p.weights_by_type.items()))
        groups = dict(p.weights_by_group)
        tied = "output" not in groups
        lines.append("  by group: " + ", ".join(f"{k} {_mib(v)}" for k, v in groups.items())
                     + (" (output tied to token_embd)" if tied else
                        " (token_embd: only rows of tokens seen get paged in)"))
        row(f"KV cache at {p.n_tokens} tokens", p.kv_allocated, None, "part of anonymous")
        row(f"KV cache at full n_ctx {p.n_ctx}", p.kv_full)
        row(f"scratch (n_batch {p.n_batch})", p.scratch_total, None, "only during a forward call")
        row("metadata as Python objects (vocab)", p.metadata_objects, None, "part of anonymous")
        row("tokenizer tables (Python objects)", p.tokenizer_objects, None, "part of anonymous")
        row("compiled kernels (numba)", p.kernels, None,
            "measured at load" if p.kernels_measured else "estimate; --run measures it")
        row("runtime (Python, numpy, numba)", p.runtime_baseline or None, None,
            "anonymous, measured at start-up" if p.runtime_baseline else "not measured")
        if p.runtime_files:
            row("runtime shared libraries", p.runtime_files, None, "file-backed, measured at start-up")
        if m is not None:
            row("anonymous", p.anon, m.rss_anon, "RssAnon")
            other = None
            if m.rss_file is not None:
                other = m.rss_file - (m.weights_resident or 0)
            row("other file-backed (libraries)", None, other, "RssFile minus the model file")
            row("resident total", p.rss, m.rss, "VmRSS")
            row("swap", None, m.swap, "VmSwap")
            row("peak resident (+ scratch)", p.peak, m.peak_rss, "VmHWM")
        else:
            row("anonymous", p.anon)
            row("resident total", p.rss)
            row("peak resident (+ scratch)", p.peak)

        if self.ollama:
            s = self.ollama_settings
            lines += ["",
                      f"What `ollama ps` would show as SIZE for num_ctx {s.get('num_ctx', p.n_ctx)}, "
                      f"num_parallel {s.get('num_parallel', 1)}, OLLAMA_KV_CACHE_TYPE="
                      f"{s.get('kv_type', p.kv_type)}, OLLAMA_FLASH_ATTENTION="
                      f"{ {'on': '1', 'off': '0'}.get(s.get('flash_attn'), 'unset')}",
                      "Ollama units: decimal, as Ollama prints them (1 GB = 10^9 bytes, 1 MB = 10^6 bytes)",
                      f"{'version band':24}{'SIZE':>9}   made of (MB)"]
            notes: list[str] = []
            for fig in self.ollama:
                parts = " + ".join(f"{k} {_mb(v)}" for k, v in fig.parts.items() if v)
                marks = ""
                for note in fig.notes:
                    if note not in notes:
                        notes.append(note)
                    marks += f" [{notes.index(note) + 1}]"
                lines.append(f"{fig.band.label:24}{fig.printed:>9}   {parts}{marks}")
            lines += [f"  [{i}] {note}" for i, note in enumerate(notes, 1)]
        return "\n".join(lines)


def ledger(g, n_ctx: int, kv_type: str = "f16", n_batch: int = 32, flash_attn: bool = True,
           n_tokens: int = 0, runtime_baseline_bytes: int = 0, num_parallel: int = 1,
           ollama_flash_attn: str | None = None, measure: bool = True,
           kv_chunk: int = KV_CHUNK, tokenizer=None, kernels_bytes: int | None = None,
           ollama_version: str | None = None, ollama_device: str = "cpu") -> Ledger:
    """Plan + measurement of this process + Ollama's figures: what `tinyllm mem` prints.

    ollama_flash_attn is OLLAMA_FLASH_ATTENTION as the user would set it ('on', 'off',
    'auto'); by default it follows flash_attn ('on'/'off').  tinyllm's f32 cache has no
    Ollama equivalent; Ollama is asked for f16 then.  ollama_version (e.g. '0.5.4')
    keeps only the band of that version on ollama_device ('cpu', 'cuda', 'metal').
    """
    # Measure first: counting the tokenizer's objects for the plan walks every string of
    # the vocabulary, and that walk's own transient memory must not show up as ours.
    now = measured(model_path=g.path) if measure else None
    plan = MemoryPlan.from_gguf(g, n_ctx, kv_type, n_batch, flash_attn, n_tokens,
                                runtime_baseline_bytes, kv_chunk, tokenizer=tokenizer,
                                kernels_bytes=kernels_bytes)
    fa = ollama_flash_attn or ("on" if flash_attn else "off")
    okv = kv_type if kv_type in ollama.OLLAMA_KV_BYTES and kv_type != "f32" else "f16"
    model = ollama.OllamaModel.from_gguf(g)
    bands = ollama.BANDS if ollama_version is None else (ollama.band_for(ollama_version, ollama_device),)
    figures = ollama.ollama_report(model, n_ctx, num_parallel, okv, fa, bands=bands)
    settings = {"num_ctx": n_ctx, "num_parallel": num_parallel, "kv_type": okv, "flash_attn": fa}
    if ollama_version is not None:
        settings.update(version=ollama_version, device=ollama_device)
    return Ledger(plan, now, figures, settings)

"""From logits to the next token.

The filters run in the order llama.cpp's default sampler chain uses:
repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw.
temperature 0 means greedy (argmax), which is what the agreement tests use.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .ops import softmax, top_k


@dataclass
class SamplerSettings:
    """The built-in values are llama.cpp's defaults; a model's own recommendations
    replace them (see model_settings below)."""
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0      # 1.0 = off
    repeat_last_n: int = 64          # 0 = off, -1 = the whole history (llama.cpp's convention)
    seed: int | None = None
    # where each value came from ("flag", "gguf", "registry", "built-in"), for the banner
    sources: dict = field(default_factory=dict, compare=False, repr=False)


# ---- which values a model samples with --------------------------------------------------
#
# A value is taken from the first of these that gives it, as Ollama layers a request's
# options over a Modelfile's PARAMETERs over its own defaults:
#   1. the user: a command-line flag, a /set, an API request's options
#   2. the GGUF's general.sampling.* keys (llama.cpp's converter writes them from the
#      model's generation_config.json when asked to)
#   3. models/registry.json's "sampling" for a registry model: the model maker's
#      recommendation (model card or generation_config.json)
#   4. the built-in SamplerSettings defaults above
# general.sampling.sequence (the order of the samplers) and the mirostat/xtc keys are
# not read: tinyllm has one fixed chain and no such samplers.

GGUF_SAMPLING_KEYS = {
    "temperature": "general.sampling.temp",
    "top_k": "general.sampling.top_k",
    "top_p": "general.sampling.top_p",
    "min_p": "general.sampling.min_p",
    "repeat_penalty": "general.sampling.penalty_repeat",
    "repeat_last_n": "general.sampling.penalty_last_n",
}
_TYPES = {"temperature": float, "top_k": int, "top_p": float, "min_p": float,
          "repeat_penalty": float, "repeat_last_n": int}


def model_settings(name_or_path: str | None, gguf=None, overrides: dict | None = None) -> SamplerSettings:
    """The sampler settings for a model: `overrides` (the user's values; None entries
    mean "not given") over the GGUF's general.sampling.* keys over the registry's
    recommendation for this model over the built-in defaults.  Each value's origin is
    recorded in .sources.  `gguf` is the opened GGUFFile (None: skip its keys)."""
    from .registry import sampling_defaults
    layers = [("flag", {k: v for k, v in (overrides or {}).items() if v is not None})]
    if gguf is not None:
        layers.append(("gguf", {k: gguf.get(key) for k, key in GGUF_SAMPLING_KEYS.items()
                                if gguf.get(key) is not None}))
    layers.append(("registry", sampling_defaults(name_or_path)))
    s = SamplerSettings()
    for f in fields(SamplerSettings):
        if f.name == "sources":
            continue
        s.sources[f.name] = "built-in"
        for source, values in layers:
            if values.get(f.name) is not None:
                v = values[f.name]
                setattr(s, f.name, _TYPES[f.name](v) if f.name in _TYPES else v)
                s.sources[f.name] = source
                break
    return s


def describe(s: SamplerSettings) -> str:
    """'temp 0.2 top_p 0.9 (registry) | top_k 40 min_p 0.05 ... (built-in)': the values,
    grouped by where they came from, in order of precedence."""
    names = {"temperature": "temp", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
             "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n"}
    groups = {}
    for attr, label in names.items():
        groups.setdefault(s.sources.get(attr, "built-in"), []).append(f"{label} {getattr(s, attr):g}")
    order = ["/set", "flag", "gguf", "registry", "built-in"]
    order += [src for src in groups if src not in order]
    return " | ".join(f"{' '.join(groups[src])} ({src})" for src in order if src in groups)


class Sampler:
    def __init__(self, settings: SamplerSettings | None = None):
        self.s = settings or SamplerSettings()
        self.rng = np.random.default_rng(self.s.seed)

    def reseed(self, seed: int | None) -> None:
        self.s.seed = seed
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray, history=()) -> int:
        s = self.s
        logits = logits.astype(np.float32, copy=True)
        if s.repeat_penalty != 1.0 and len(history) and s.repeat_last_n != 0:
            # CTRL's penalty (Keskar et al. 2019): make recently seen tokens less likely,
            # dividing positive logits and multiplying negative ones.
            n = s.repeat_last_n
            window = history if n < 0 or n >= len(history) else history[len(history) - n:]
            seen = np.unique(np.asarray(window, dtype=np.int64))
            lv = logits[seen]
            logits[seen] = np.where(lv > 0, lv / s.repeat_penalty, lv * s.repeat_penalty)
        if s.temperature <= 0:
            return int(np.argmax(logits))

        # Work on the candidates that survive top-k, sorted by logit, descending.
        k = s.top_k if 0 < s.top_k < logits.size else logits.size
        cand = top_k(logits, k) if k < logits.size else np.arange(logits.size)
        cand = cand[np.argsort(-logits[cand], kind="stable")]     # ties: the lower id first
        probs = softmax(logits[cand].astype(np.float64))
        if 0 < s.top_p < 1:
            # nucleus (Holtzman et al. 2019): the smallest prefix whose mass reaches top_p
            keep = int(np.searchsorted(np.cumsum(probs), s.top_p)) + 1
            cand, probs = cand[:keep], probs[:keep]
        if s.min_p > 0:
            # min-p: drop tokens less likely than min_p times the most likely one
            keep = probs >= s.min_p * probs[0]
            cand = cand[keep]
        scaled = logits[cand].astype(np.float64) / s.temperature
        p = softmax(scaled)
        return int(cand[self.rng.choice(len(cand), p=p)])


def sampler_from_args(args, gguf=None) -> Sampler:
    """The sampler of the CLI's --temp/--top-k/--top-p/--min-p/--repeat-penalty/--seed over
    the model's own defaults (model_settings: a flag left unset takes the GGUF's or the
    registry's value)."""
    flags = {"temperature": args.temp, "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p,
             "repeat_penalty": args.repeat_penalty, "repeat_last_n": getattr(args, "repeat_last_n", None),
             "seed": args.seed}
    return Sampler(model_settings(getattr(args, "model", None), gguf, flags))

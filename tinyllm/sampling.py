"""From logits to the next token.

The filters run in the order llama.cpp's default sampler chain uses:
repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw.
temperature 0 means greedy (argmax), which is what the agreement tests use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ops import softmax, top_k


@dataclass
class SamplerSettings:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0      # 1.0 = off
    repeat_last_n: int = 64
    seed: int | None = None


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
        if s.repeat_penalty != 1.0 and len(history):
            # CTRL's penalty (Keskar et al. 2019): make recently seen tokens less likely,
            # dividing positive logits and multiplying negative ones.
            seen = np.unique(np.asarray(history[-s.repeat_last_n:], dtype=np.int64))
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


def sampler_from_args(args) -> Sampler:
    """The sampler the CLI's --temp/--top-k/--top-p/--min-p/--repeat-penalty/--seed ask for."""
    return Sampler(SamplerSettings(temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                                   min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed))

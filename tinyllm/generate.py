"""The generation loop: prefill the prompt, then decode one token at a time.

    prefill: the prompt's tokens go through the model in batches of n_batch
             (one matmul per weight per batch: compute-bound, fast per token)
    decode:  one token per forward pass (one matvec per weight: memory-bound)

Tokens already in the KV cache are not recomputed: a chat turn only feeds the
new part of the conversation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .errors import TinyLLMError
from .sampling import Sampler


@dataclass
class Stats:
    n_prompt: int = 0
    n_gen: int = 0
    t_prompt: float = 0.0
    t_gen: float = 0.0
    stop_reason: str = ""

    @property
    def prefill_tok_s(self) -> float:
        return self.n_prompt / self.t_prompt if self.t_prompt > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.n_gen / self.t_gen if self.t_gen > 0 else 0.0


@dataclass
class Session:
    """A model plus the token ids currently held in its KV cache."""
    model: object
    tokenizer: object
    n_batch: int = 256
    tokens: list = field(default_factory=list)
    n_fed: int = 0                  # tokens the last prefill computed (the rest came from the cache)

    def reset(self) -> None:
        self.tokens = []
        self.model.reset()

    def prefill(self, ids: list) -> object:
        """Feed ids (the whole sequence so far). Reuses the common prefix already cached.
        Returns the logits after the last id."""
        n_ctx = self.model.n_ctx
        if not ids:
            raise TinyLLMError("the prompt has no tokens")
        if len(ids) > n_ctx:
            raise TinyLLMError(f"prompt is {len(ids)} tokens, longer than the context ({n_ctx}); "
                               f"use a shorter prompt or a larger --ctx")
        n_common = 0
        for a, b in zip(self.tokens, ids):
            if a != b:
                break
            n_common += 1
        if n_common == len(ids):       # nothing new: recompute the last position for its logits
            n_common -= 1
        # a sliding-window ring may no longer hold what position n_common needs to see:
        # then the cache starts over and truncate() says so by returning 0
        n_common = self.model.cache.truncate(n_common)
        self.tokens = list(ids[:n_common])
        self.n_fed = len(ids) - n_common
        # The last id always goes through the one-token path, so that the logits a prompt
        # ends with do not depend on how much of it was cached: with 8-bit activations the
        # batched and one-token kernels round and sum differently (~0.5 logit apart on
        # SmolLM2), and the same request with the same seed must give the same reply.
        last = len(ids) - 1
        for start in range(n_common, last, self.n_batch):
            chunk = ids[start:min(start + self.n_batch, last)]
            self.model.forward(chunk, start)
            self.tokens.extend(chunk)
        logits = self.model.forward(ids[last:], last)
        self.tokens.append(ids[last])
        return logits

    def generate(self, prompt_ids: list, sampler: Sampler, n_predict: int = 128,
                 stop_strings=(), stats: Stats | None = None, on_token=None, on_prompt=None):
        """Yield text pieces of the continuation. Stops at an end-of-generation token,
        a stop string, n_predict tokens or a full context (stats.stop_reason says which).
        on_prompt(stats), if given, is called once the prompt is in the KV cache."""
        stats = stats if stats is not None else Stats()
        t0 = time.perf_counter()
        logits = self.prefill(prompt_ids)
        stats.t_prompt = time.perf_counter() - t0
        stats.n_prompt = self.n_fed
        if on_prompt:
            on_prompt(stats)
        stream = self.tokenizer.stream()
        text, emitted = "", 0
        hold = max((len(s) for s in stop_strings), default=0)
        t1 = time.perf_counter()
        stats.stop_reason = "length"
        for _ in range(n_predict):
            tok = sampler(logits, self.tokens)
            if tok in self.tokenizer.eog_ids:
                stats.stop_reason = "eog"
                break
            stats.n_gen += 1
            text += stream.feed(tok)
            if on_token:
                on_token(tok)
            hit = min((i for i in (text.find(s, max(0, emitted - len(s))) for s in stop_strings) if i >= 0),
                      default=-1)
            if hit >= 0:
                if hit > emitted:
                    yield text[emitted:hit]
                emitted = len(text)
                stats.stop_reason = "stop string"
                break
            # hold back what could still become the start of a stop string
            safe = len(text) - hold + 1 if hold else len(text)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            if len(self.tokens) + 1 > self.model.n_ctx:
                stats.stop_reason = "context full"   # tok was shown but has no room in the cache
                break
            logits = self.model.forward([tok], len(self.tokens))
            self.tokens.append(tok)
        if stats.stop_reason != "stop string":
            text += stream.flush()
            if len(text) > emitted:
                yield text[emitted:]
        stats.t_gen = time.perf_counter() - t1

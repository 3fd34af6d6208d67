"""SentencePiece BPE (`tokenizer.ggml.model == "llama"`): Llama 2, Gemma, Mistral v1...

    text --spaces become "▁"--> characters --merge the pair whose joined text is
         the token with the highest score--> tokens; a character with no token
         --> its UTF-8 bytes as <0xNN> tokens (byte fallback)

There is no pre-tokenizer: a whole stretch of text between special tokens is one
word, and the scores alone decide where tokens end.

Why not the `sentencepiece` library: llama.cpp does not use it either; it runs
this algorithm over the GGUF vocabulary, and the two disagree at the edges --
sentencepiece never merges into CONTROL or BYTE pieces and matches the
user-defined whitespace pieces ("  ", "\n\n") differently.  Fed Gemma 3's
vocabulary as a hand-built model proto, it agreed with llama.cpp on only 363 of
827 test strings, and building + loading that proto took 0.7 s and 70 MiB;
this takes ~0.2 s and ~17 MiB and agrees on all of them.
"""

from __future__ import annotations

from typing import Optional

from .merge import merge_pairs
from .vocab import Vocab

SPACE = "\u2581"  # "▁", SentencePiece's visible space


class SentencePiece:
    """Text without special tokens -> ids, and id -> bytes, for a llama-type vocab."""

    def __init__(self, vocab: Vocab, scores):
        self.vocab = vocab
        self.scores = scores  # float32 per token, a view over the GGUF map
        self.unk_id = vocab.ids["unk"]
        # byte value -> its <0xNN> token (or, failing that, the one-character token)
        self.byte_ids = [vocab.token_to_id.get(f"<0x{b:02X}>", vocab.token_to_id.get(chr(b)))
                         for b in range(256)]

    def _pair_priority(self, left: str, right: str) -> Optional[float]:
        # Any token spelled by the two symbols can be formed, whatever its type.
        tid = self.vocab.token_to_id.get(left + right)
        return None if tid is None else float(self.scores[tid])

    def encode(self, text: str) -> list[int]:
        token_to_id = self.vocab.token_to_id
        ids: list[int] = []
        for symbol in merge_pairs(text.replace(" ", SPACE), self._pair_priority):
            tid = token_to_id.get(symbol)
            if tid is not None:
                ids.append(tid)
                continue
            # Only a lone character can be left without a token (every merge
            # produced one): spell it in bytes.
            for b in symbol.encode("utf-8"):
                byte_id = self.byte_ids[b]
                if byte_id is None:
                    byte_id = self.unk_id
                if byte_id is not None:
                    ids.append(byte_id)
        return ids

    def piece(self, tid: int) -> bytes:
        """The bytes token `tid` stands for: the SentencePiece space mark is a space."""
        return self.vocab.piece(tid, lambda text: text.replace(SPACE, " ").encode("utf-8"))

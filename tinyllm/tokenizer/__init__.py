"""Text <-> token ids for GGUF models, giving the same ids as llama.cpp.

    encode:  text --special tokens cut out (vocab.py)--> plain text pieces
                  --byte-level BPE (bpe.py) or SentencePiece (spm.py)--> ids, BOS first
    decode:  ids --> the bytes each token stands for --> UTF-8 text

A generated token can end in the middle of a UTF-8 character (an emoji is often
2-4 byte tokens), so streaming output goes through StreamDecoder, which holds
back incomplete characters.
"""

from __future__ import annotations

import codecs
from typing import Iterable, Optional

import numpy as np

from ..errors import TinyLLMError
from .bpe import ADD_BOS_BY_DEFAULT, BytePairEncoding
from .spm import SentencePiece
from .vocab import HIDDEN, TokenAttr, Vocab

__all__ = ["Tokenizer", "StreamDecoder", "TokenAttr"]

SUPPORTED_MODELS = "'gpt2' (byte-level BPE) and 'llama' (SentencePiece)"


class Tokenizer:
    """A GGUF vocabulary: encode(text) -> ids, decode(ids) -> text."""

    def __init__(self, vocab: Vocab, model, add_bos: bool, add_eos: bool,
                 add_space_prefix: bool):
        self.vocab = vocab
        self.model = model                  # BytePairEncoding or SentencePiece
        self.add_bos = add_bos              # does the model want BOS at the start?
        self.add_eos = add_eos
        self.add_space_prefix = add_space_prefix  # SentencePiece: " " before the text
        self.vocab_size = len(vocab)
        self.bos_id: Optional[int] = vocab.ids["bos"]
        self.eos_id: Optional[int] = vocab.ids["eos"]
        self.eog_ids: set[int] = vocab.eog_ids
        self._hidden = frozenset(np.flatnonzero(vocab.attr & HIDDEN).tolist())
        self._pieces: dict[int, bytes] = {}  # id -> bytes, filled as tokens are seen

    @classmethod
    def from_gguf(cls, g) -> "Tokenizer":
        meta = g.metadata
        kind = meta.get("tokenizer.ggml.model")
        if "tokenizer.ggml.tokens" not in meta:
            raise TinyLLMError(f"{getattr(g, 'path', 'model')}: no vocabulary "
                               "(tokenizer.ggml.tokens) in this GGUF file")
        # Per-type defaults are llama.cpp's, used when the file does not say.
        if kind == "gpt2":
            pre = meta.get("tokenizer.ggml.pre", "")
            vocab = Vocab(meta, {"bos": 11, "eos": 11})
            model = BytePairEncoding(vocab, meta.get("tokenizer.ggml.merges", []), pre)
            add_bos, add_space_prefix = pre in ADD_BOS_BY_DEFAULT, False
        elif kind == "llama":
            vocab = Vocab(meta, {"bos": 1, "eos": 2, "unk": 0})
            scores = meta.get("tokenizer.ggml.scores")
            if scores is None:
                raise TinyLLMError("SentencePiece vocabulary without tokenizer.ggml.scores")
            model = SentencePiece(vocab, scores)
            add_bos, add_space_prefix = True, True
        else:
            raise TinyLLMError(f"unsupported tokenizer.ggml.model={kind!r}; "
                               f"tinyllm supports {SUPPORTED_MODELS}")
        return cls(vocab, model,
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", add_bos)),
                   add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
                   add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix",
                                                  add_space_prefix)))

    # ---- text -> ids ------------------------------------------------------------------
    def encode(self, text: str, add_bos: Optional[bool] = None,
               parse_special: bool = False) -> list[int]:
        """Token ids of `text`.

        add_bos: None -> as the model says (tokenizer.ggml.add_bos_token), True/False
        to force it.  parse_special: control tokens written in the text, such as
        "<|im_start|>", become their ids instead of being spelled out.
        """
        with_bos = self.add_bos if add_bos is None else add_bos
        ids: list[int] = []
        if with_bos and self.bos_id is not None:
            ids.append(self.bos_id)
        prev_special = True  # SentencePiece adds its space prefix after specials
        for frag in self.vocab.split_special(text, parse_special):
            if isinstance(frag, int):
                ids.append(frag)
                prev_special = True
                continue
            if isinstance(self.model, SentencePiece) and self.add_space_prefix and prev_special:
                frag = " " + frag
            ids.extend(self.model.encode(frag))
            prev_special = False
        if self.add_eos and add_bos is not False and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    # ---- ids -> text ------------------------------------------------------------------
    def token_to_piece(self, tid: int, special: bool = True) -> bytes:
        """The bytes token `tid` stands for.  special=False hides control tokens."""
        piece = self._pieces.get(tid)
        if piece is None:
            if not 0 <= tid < self.vocab_size:
                raise TinyLLMError(
                    f"token id {tid} is outside the vocabulary (0..{self.vocab_size - 1})")
            piece = self._pieces[tid] = self.model.piece(tid)
        if not special and tid in self._hidden:
            return b""
        return piece

    def decode(self, ids: Iterable[int], special: bool = True) -> str:
        """Text of a token sequence.  Control tokens (BOS, <|im_end|>...) show as
        their text unless special=False.  Invalid UTF-8 becomes U+FFFD."""
        pieces = [self.token_to_piece(int(t), special) for t in ids]
        if pieces and self.add_space_prefix and pieces[0][:1] == b" ":
            # the space SentencePiece put in front of the text (llama.cpp strips
            # it from the first token only, so after a BOS it stays)
            pieces[0] = pieces[0][1:]
        return b"".join(pieces).decode("utf-8", errors="replace")

    def stream(self, special: bool = False) -> "StreamDecoder":
        """A decoder for tokens arriving one at a time (generation); control
        tokens are hidden unless special=True, as llama.cpp prints them."""
        return StreamDecoder(self, special)

    def is_eog(self, tid: int) -> bool:
        return tid in self.eog_ids

    def __repr__(self) -> str:
        kind = "BPE" if isinstance(self.model, BytePairEncoding) else "SentencePiece"
        return (f"Tokenizer({kind}, {self.vocab_size} tokens, bos={self.bos_id}, "
                f"eos={self.eos_id}, add_bos={self.add_bos}, eog={sorted(self.eog_ids)})")


class StreamDecoder:
    """feed(id) -> the text that is now complete; flush() -> whatever is left.

    UTF-8 characters split across tokens are held back until their last byte
    arrives, so a terminal never shows half an emoji.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self.tokenizer = tokenizer
        self.special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, tid: int) -> str:
        return self._utf8.decode(self.tokenizer.token_to_piece(tid, self.special))

    def flush(self) -> str:
        """End of stream: incomplete bytes come out as U+FFFD."""
        return self._utf8.decode(b"", final=True)

"""Compare tinyllm's tokenizer with llama.cpp on thousands of random strings.

The committed test (tests/test_tokenizer.py) checks ~70 curated strings per
model; this digs further: random mixes of scripts, emoji, odd whitespace,
digits, contractions and special-token texts, plus real source/doc files, with
and without special-token parsing.  It also checks every token's attributes,
piece bytes and the end-of-generation set, and exercises the pre-tokenizers
the real models do not use (llama-bpe, qwen2, gpt-2) by writing vocab-only
copies of SmolLM2's vocabulary with `tokenizer.ggml.pre` changed.

Needs llama-cpp-python, gguf and regex (the reference venv):

    /work/refenv/venv/bin/python scripts/fuzz_tokenizer.py [--n 1500] [--seed 0]
"""

import argparse
import ctypes
import glob
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import llama_cpp  # noqa: E402
from gguf import GGUFReader, GGUFValueType, GGUFWriter  # noqa: E402
from llama_cpp import Llama  # noqa: E402

from tinyllm.gguf_file import GGUFFile  # noqa: E402
from tinyllm.tokenizer import Tokenizer  # noqa: E402

MODELS = {"smollm2": ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
          "gemma3": ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"}


def random_strings(n: int, seed: int) -> list:
    rng = random.Random(seed)
    chars = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 3
             + list(" " * 30) + list("\n\t\r\x0b\x0c\u00a0\u2003\u3000\u0085\u2028")
             + list(".,;:!?'\"()[]{}<>/\\|@#$%^&*-_=+~`") * 2 + list("éèêëàâäôöûüçñßøåæœÉÀÇÑ")
             + list("日本語中文字한국어テキスト") + list("ПриветмирΕλληνικάעבריתالعربيةहिन्दीไทย")
             + ["😀", "👋", "🏽", "\u200d", "👨", "👩", "❤", "\ufe0f", "🔥", "\u0301", "\u0308", "²",
                "½", "Ⅻ", "٣", "๑", "\U0001d400", "\ue000", "\U000e0001", "\u0378"])
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<start_of_turn>", "<end_of_turn>",
                "<bos>", "<eos>", "</s>", "<b>", "<0x41>", "<unused3>", "'s", "'LL", "'Re", "<reponame>"]
    words = ["the", " the", "The", "hello", "world", "tokenizer", "don't", "I'm", "they're", "123",
             "2024", "3.14", "  ", "\n\n", "    ", "\t\t", "def", "return", "café", "naïve"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 60)):
            r = rng.random()
            parts.append(rng.choice(chars if r < 0.6 else words if r < 0.9 else specials))
        out.append("".join(parts))
    for f in sorted(glob.glob(str(ROOT / "tinyllm" / "*.py")))[:6] + [str(ROOT / "README.md")]:
        if Path(f).exists():
            out.append(Path(f).read_text(encoding="utf-8")[:20000])
    return out


def with_pre(src: Path, pre: str, out: Path) -> Path:
    """A vocab-only GGUF: src's metadata with tokenizer.ggml.pre = pre, no tensors."""
    reader = GGUFReader(str(src))
    w = GGUFWriter(str(out), reader.fields["general.architecture"].contents())
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        value = pre if f.name == "tokenizer.ggml.pre" else f.contents()
        if f.types[0] == GGUFValueType.ARRAY:
            w.add_key_value(f.name, value, f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(f.name, value, f.types[0])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def compare(name: str, path: Path, texts: list) -> bool:
    ref = Llama(str(path), vocab_only=True, verbose=False)
    tok = Tokenizer.from_gguf(GGUFFile(str(path)))
    bad = []
    for i, text in enumerate(texts):
        for add_bos, special in ((True, bool(i % 2)), (False, not i % 2)):
            want = ref.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)
            got = tok.encode(text, add_bos=None if add_bos else False, parse_special=special)
            if got != want:
                bad.append((text, add_bos, special, got, want))
    vocab = llama_cpp.llama_model_get_vocab(ref.model)
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    buf = (ctypes.c_char * 512)()
    eog = {i for i in range(n) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    attr_bad = [i for i in range(n) if llama_cpp.llama_vocab_get_attr(vocab, i) != int(tok.vocab.attr[i])]
    piece_bad = [i for i in range(n) if tok.token_to_piece(i) !=
                 bytes(buf[:llama_cpp.llama_token_to_piece(vocab, i, buf, 512, 0, True)])]
    n_cases = 2 * len(texts)
    print(f"{name}: ids {n_cases - len(bad)}/{n_cases} identical; eog {sorted(tok.eog_ids)} "
          f"{'==' if eog == tok.eog_ids else '!='} llama.cpp {sorted(eog)}; "
          f"attribute mismatches {len(attr_bad)}, piece mismatches {len(piece_bad)} of {n} tokens")
    for text, add_bos, special, got, want in bad[:5]:
        print(f"  {text[:60]!r} add_bos={add_bos} special={special}\n    ours {got[:20]}\n    ref  {want[:20]}")
    return not bad and eog == tok.eog_ids and not attr_bad and not piece_bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1500, help="random strings per vocabulary")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    texts = random_strings(args.n, args.seed)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in MODELS.items():
            ok &= compare(name, path, texts)
        for pre in ("llama-bpe", "qwen2", "gpt-2"):
            fake = with_pre(MODELS["smollm2"], pre, Path(tmp) / f"{pre}.gguf")
            ok &= compare(f"smollm2 vocab, pre={pre}", fake, texts[: args.n // 2])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

"""`tinyllm chat` as a person uses it: the real REPL, the real model, a real terminal.

The terminal tests drive `python -m tinyllm chat` in a pseudo-terminal (pexpect), type
messages and commands, press Ctrl-C and Ctrl-D, and read the screen.  Replies are greedy
(--temp 0) on SmolLM2-135M-Instruct.  The remembered fact was chosen with llama.cpp
(llama-cpp-python 0.3.36, greedy) on both of its paths -- the F32 copy of the same weights,
which tinyllm's exact activations match, and the Q4_1 file itself -- and holds on both of
tinyllm's (exact, and TINYLLM_ACTIVATIONS=llama): after FACT, QUESTION is answered "The
number 42 is ...", and asked on its own it gets "I'm sorry for any confusion, but as a
chatbot designed to assist with ... I don't have the ...".  (A name works on llama.cpp's
Q4_1 path -- "Hi, my name is Tom." / "Can you repeat my name?" -> "Tom." -- but not on all
four: SmolLM2-135M forgets names easily.)

Below them, cheaper in-process tests of the conversation logic (context overflow,
commands, save/load) and of the chat templates (Gemma 3's turn format, BOS exactly once).
"""

import io
import json
import os
import re
import sys
import time

import pexpect
import pytest

from conftest import ROOT, run_cli

MiB = 1 << 20
FACT, QUESTION, ANSWER = "Remember the number 42.", "Which number did I ask you to remember?", "42"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")
MEM = re.compile(r"\[mem\] (prompt|reply) (\d+) tok (?:[\d.]+|-) tok/s \| RSS ([\d.]+) MiB( [+-][\d.]+)?"
                 r" \| weights ([\d.]+)/([\d.]+) MiB \| KV (\d+)/(\d+) cells ([\d.]+)/([\d.]+) MiB"
                 r" \| scratch ([\d.]+) MiB")


class Terminal:
    """A program in a pseudo-terminal; expect() waits for text on the screen (escape
    sequences removed, as a person sees it) after the previous match."""

    def __init__(self, args, env, timeout=180):
        self.p = pexpect.spawn(sys.executable, ["-m", "tinyllm", *args], env=env, cwd=str(ROOT),
                               encoding="utf-8", dimensions=(50, 250), timeout=timeout)
        self.raw, self.pos, self.timeout = "", 0, timeout

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw)

    def expect(self, pattern: str, timeout: float | None = None) -> re.Match:
        rx, deadline = re.compile(pattern), time.monotonic() + (timeout or self.timeout)
        while True:
            m = rx.search(self.screen, self.pos)
            if m:
                self.pos = m.end()
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"waited for {pattern!r}; screen:\n{self.screen[-4000:]}")
            try:
                self.raw += self.p.read_nonblocking(65536, timeout=1)
            except pexpect.TIMEOUT:
                pass
            except pexpect.EOF:
                if not rx.search(self.screen, self.pos):
                    raise AssertionError(f"program ended while waiting for {pattern!r}; "
                                         f"screen:\n{self.screen[-4000:]}") from None

    def type(self, line: str) -> int:
        """Type a line and press Enter; returns the screen position the answer starts at.
        prompt_toolkit redraws ">>> text" while it is typed; the accepted line ends in a newline."""
        self.p.sendline(line)
        self.expect(re.escape(line) + r"[ \t]*\n")
        return self.pos

    def prompt(self) -> None:
        self.expect(r">>>")

    def finish(self, timeout: float = 30) -> int:
        self.p.expect(pexpect.EOF, timeout=timeout)
        self.raw += self.p.before or ""
        self.p.close()
        return self.p.exitstatus


def chat_env(tmp_path) -> dict:
    return dict(os.environ, TERM="xterm", TINYLLM_HISTORY=str(tmp_path / "history"),
                PROMPT_TOOLKIT_NO_CPR="1")   # pexpect does not answer cursor-position queries


def mem_lines(text: str) -> list:
    """Every [mem] line as a dict of numbers (MiB values as floats)."""
    out = []
    for m in MEM.finditer(text):
        out.append({"step": m[1], "n": int(m[2]), "rss": float(m[3]),
                    "delta": float(m[4]) if m[4] else None, "resident": float(m[5]), "file": float(m[6]),
                    "kv_used": int(m[7]), "kv_cells": int(m[8]), "kv_used_mib": float(m[9]),
                    "kv_alloc_mib": float(m[10]), "scratch": float(m[11])})
    return out


def reply_after(term: Terminal, start: int) -> str:
    """The reply text between the prompt's [mem] line and the reply's [mem] line."""
    seg = term.screen[start:term.pos]
    return seg.split("[mem] prompt", 1)[1].split("\n", 1)[1].split("[mem] reply", 1)[0].strip()


def ask(term: Terminal, text: str) -> str:
    start = term.type(text)
    term.expect(r"\[mem\] reply .*\n")
    term.prompt()
    return reply_after(term, start)


def command(term: Terminal, line: str) -> str:
    start = term.type(line)
    term.prompt()
    return term.screen[start:term.pos]


# ---- in a terminal ---------------------------------------------------------------------------

def test_conversation_in_a_terminal(smollm2_path, tmp_path):
    size_mib = os.path.getsize(smollm2_path) / MiB
    t = Terminal(["chat", "smollm2-135m", "--temp", "0", "-n", "24"], chat_env(tmp_path))

    # the banner says what runs, and how
    t.prompt()
    banner = t.screen
    for part in ("SmolLM2-135M-Instruct.Q4_1.gguf", "llama", "M parameters", "Q4_1", "Q8_0",
                 "context 2048 tokens", "KV cache f16", "flash attention", "threads", "kernels:",
                 "the model's own template"):
        assert part in banner, part

    # two turns: the second answer needs the first
    first = ask(t, FACT)
    assert first
    second = ask(t, QUESTION)
    assert ANSWER in second

    # a memory line after the prompt and after each reply, numbers that add up
    mem = mem_lines(t.screen)
    assert [m["step"] for m in mem] == ["prompt", "reply", "prompt", "reply"]
    for m in mem:
        assert abs(m["file"] - size_mib) < 0.1 and 0 < m["resident"] <= m["file"] + 0.05
        assert 0 < m["kv_used"] <= m["kv_cells"] <= 2048 and m["kv_used_mib"] <= m["kv_alloc_mib"]
        assert m["rss"] > m["resident"] and m["scratch"] > 0
    for a, b in zip(mem, mem[1:]):
        assert abs(b["delta"] - (b["rss"] - a["rss"])) <= 0.11      # "change since the previous step"
    p1, r1, p2, r2 = mem
    assert p1["kv_used"] == p1["n"]                                  # a fresh cache: the whole prompt
    assert r1["kv_used"] == p1["kv_used"] + r1["n"]                  # every generated token is cached
    # turn 2 reuses the cached first turn: only the new tokens are computed
    assert p2["kv_used"] - p2["n"] >= r1["kv_used"] - 2 and p2["n"] < p1["n"]

    # Ctrl-C in the middle of a long reply stops it and keeps it, marked
    assert "[n_predict = 200]" in command(t, "/set n_predict 200")
    start = t.type("Write a long story about a dragon.")
    t.expect(r"\[mem\] prompt .*\n")
    t.expect(r"\w+\W+\w+\W+\w+")                    # a few words of the story are on the screen
    t.p.sendintr()
    t.expect(r"\[interrupted\]")
    t.expect(r"\[mem\] reply (\d+) tok")
    t.prompt()
    shown = t.screen[start:t.pos].split("[mem] prompt", 1)[1].split("\n", 1)[1].split("[interrupted]")[0]
    command(t, f"/save {tmp_path / 'after_interrupt.json'}")
    saved = json.loads((tmp_path / "after_interrupt.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"] * 3
    story = saved["messages"][-1]
    assert story.get("interrupted") is True and story["content"].strip()
    assert story["content"].strip().split()[0] in shown

    # ... and the conversation goes on in the same cache: only the new message is computed
    command(t, "/set n_predict 8")
    start = t.type("Thank you.")
    t.expect(r"\[mem\] reply .*\n")
    t.prompt()
    p3 = mem_lines(t.screen[start:t.pos])[0]
    assert p3["n"] < 20 < p3["kv_used"] - p3["n"]
    command(t, "/set n_predict 24")

    # Ctrl-C at an empty prompt does not leave
    t.p.sendintr()
    t.expect(r"Ctrl-D or /quit")
    t.prompt()

    # /mem: the whole ledger and Ollama's figure for the same settings
    out = command(t, "/mem")
    for part in ("planned", "measured", "KV cache at", "scratch", "RssAnon", "VmRSS",
                 "ollama ps", "num_ctx 2048", "Ollama units: decimal"):
        assert part in out, part
    assert re.search(r"CPU-only \S+\s+\d+ MB", out)
    out = command(t, "/kv")
    assert re.search(r"KV cache f16: \d+ cells used of \d+ allocated \(n_ctx 2048\)", out)

    # /reset forgets: the same question now gets another answer
    assert "conversation cleared" in command(t, "/reset")
    assert "KV cache holds 0" in command(t, "/ctx")
    assert ANSWER not in ask(t, QUESTION)

    # /load brings the first conversation back, and the model answers from it again
    out = command(t, f"/load {tmp_path / 'after_interrupt.json'}")
    assert "loaded 6 messages" in out
    command(t, f"/save {tmp_path / 'reloaded.json'}")
    assert json.loads((tmp_path / "reloaded.json").read_text())["messages"] == saved["messages"]
    command(t, "/reset")
    first_turn = dict(saved, messages=saved["messages"][:2])
    (tmp_path / "first_turn.json").write_text(json.dumps(first_turn))
    assert "loaded 2 messages" in command(t, f"/load {tmp_path / 'first_turn.json'}")
    assert ANSWER in ask(t, QUESTION)

    # wrong input gets one line of help, never a traceback
    out = command(t, "/frobnicate")
    assert "unknown command /frobnicate" in out and "/help" in out
    assert "bad value 'hot' for temp" in command(t, "/set temp hot")
    assert "bad value '0' for n_predict" in command(t, "/set n_predict 0")
    assert "unknown setting" in command(t, "/set warp 9")
    assert "cannot read" in command(t, f"/load {tmp_path / 'missing.json'}")
    (tmp_path / "junk.json").write_text("{not json")
    assert "not a conversation" in command(t, f"/load {tmp_path / 'junk.json'}")
    assert "usage: /save FILE" in command(t, "/save")
    assert "/system [TEXT]" in command(t, "/help")

    # Ctrl-D leaves cleanly
    t.p.sendeof()
    assert t.finish() == 0
    assert "Traceback" not in t.screen
    history = (tmp_path / "history").read_text()                     # prompt_toolkit's history file
    assert FACT in history and "/set temp hot" in history


def test_context_overflow_in_a_terminal(tmp_path):
    # Replies of 1 to 8 tokens (-n 8, so 8 are kept free for a reply) in a 72-token context:
    # the second turn's prompt is 44..51 tokens (fits), the third's 65..79 (does not), and
    # without the first turn 46..53 (fits again), so exactly the first turn is dropped.
    t = Terminal(["chat", "smollm2-135m", "--temp", "0", "-n", "8", "--ctx", "72",
                  "--system", "Be brief."], chat_env(tmp_path))
    t.prompt()
    assert "context 72 tokens" in t.screen
    sent = [FACT, "Tell me a story about a dragon.", QUESTION]
    ask(t, sent[0])
    ask(t, sent[1])
    assert "context full" not in t.screen
    start = t.type(sent[2])
    t.expect(r"context full: .*no longer sees the 2 oldest messages, kept the system prompt")
    t.expect(r"\[mem\] reply .*\n")
    t.prompt()
    assert reply_after(t, start)                    # the conversation went on
    for m in mem_lines(t.screen):
        assert m["kv_used"] <= 72
    command(t, f"/save {tmp_path / 'c.json'}")
    msgs = json.loads((tmp_path / "c.json").read_text())["messages"]
    # the model no longer sees the oldest turn, but the transcript keeps it, marked
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * 3
    assert [m["content"] for m in msgs if m["role"] == "user"] == sent
    assert [bool(m.get("trimmed")) for m in msgs[1:]] == [True, True, False, False, False, False]
    assert msgs[-1]["content"]
    assert "2 messages dropped" in command(t, "/ctx")
    t.type("/quit")
    assert t.finish() == 0


# ---- piped stdin ---------------------------------------------------------------------------

def test_piped_stdin(smollm2_path):
    """One message per line; replies on stdout, status on stderr; --verbose: a line per token."""
    r = run_cli("chat", "smollm2-135m", "--temp", "0", "-n", "24", "--verbose",
                input=f"{FACT}\n\n{QUESTION}\n/kv\n/bogus\n")
    assert r.returncode == 0, r.stderr
    replies = r.stdout.splitlines()
    assert len(replies) == 2 and ANSWER in replies[1]
    assert "[mem]" not in r.stdout and "\x1b" not in r.stdout + r.stderr
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in r.stderr and "KV cache f16:" in r.stderr
    assert "unknown command /bogus" in r.stderr and "Traceback" not in r.stderr
    gen = [int(n) for n in re.findall(r"\[mem\] reply (\d+) tok", r.stderr)]
    tokens = [int(n) for n in re.findall(r"\[mem\] token (\d+) ", r.stderr)]
    assert len(gen) == 2 and tokens == list(range(1, gen[0] + 1)) + list(range(1, gen[1] + 1))


def test_gemma_base_model_uses_gemma_turns(gemma_tok):
    _, tok = gemma_tok
    r = run_cli("chat", "gemma3-270m", "--temp", "0", "-n", "4", input="Hello!\n")
    assert r.returncode == 0, r.stderr
    assert "gemma3" in r.stderr and "built-in Gemma turn format" in r.stderr
    assert "base model" in r.stderr and "[mem] reply" in r.stderr
    # the prompt is Gemma 3's turn markup with one BOS
    n = len(tok.encode("<start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n",
                       add_bos=True, parse_special=True))
    assert f"[mem] prompt {n} tok" in r.stderr


def test_qwen_chats_in_its_chatml_template(qwen05_path):
    """Qwen2.5-Coder's own template: ChatML with its default system prompt; each reply
    ends at <|im_end|> (not at -n), and the next turn feeds only the new markup."""
    from tinyllm.gguf_file import GGUFFile
    from tinyllm.tokenizer import Tokenizer
    tok = Tokenizer.from_gguf(GGUFFile(qwen05_path))
    first, second = "What is 2 + 3? Reply with the number only.", "And times 4?"
    r = run_cli("chat", "qwen2.5-coder-0.5b", "--temp", "0", "-n", "64", input=f"{first}\n{second}\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "chat format: the model's own template" in r.stderr
    assert "reply stopped at n_predict" not in r.stderr
    replies = r.stdout.splitlines()
    assert len(replies) == 2 and replies[0].strip() == "5"
    system = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    turn1 = f"{system}<|im_start|>user\n{first}<|im_end|>\n<|im_start|>assistant\n"
    both = f"{turn1}{replies[0]}<|im_end|>\n<|im_start|>user\n{second}<|im_end|>\n<|im_start|>assistant\n"
    n1 = len(tok.encode(turn1, parse_special=True))
    n_reply = len(tok.encode(replies[0]))
    n2 = len(tok.encode(both, parse_special=True)) - n1 - n_reply
    prompts = [int(n) for n in re.findall(r"\[mem\] prompt (\d+) tok", r.stderr)]
    assert prompts == [n1, n2], (prompts, n1, n2)


# ---- the conversation logic, in process ------------------------------------------------------

@pytest.fixture(scope="module")
def small_chat(smollm2_path):
    from tinyllm.chat import Chat
    from tinyllm.model import Model
    from tinyllm.sampling import Sampler, SamplerSettings
    from tinyllm.tokenizer import Tokenizer
    model = Model(smollm2_path, n_ctx=96)
    tok = Tokenizer.from_gguf(model.gguf)

    def make(system=None, n_predict=24):
        return Chat(model, tok, Sampler(SamplerSettings(temperature=0)), n_predict, system,
                    out=io.StringIO(), err=io.StringIO())
    return make


def test_overflow_drops_oldest_turns_keeps_system_and_new_message(small_chat):
    chat = small_chat(system="Be brief.")
    turns = [("user", "Tell me about the sea and the ships on it."), ("assistant", "The sea is wide. " * 4),
             ("user", "And the mountains?"), ("assistant", "Mountains are high. " * 4),
             ("user", "What about rivers?")]
    chat.messages += [{"role": r, "content": c} for r, c in turns]
    typed = [dict(m) for m in chat.messages]
    ids = chat.fit_context()
    assert len(ids) + chat.room_for_reply() <= 96
    seen = chat.visible()                                       # what the model is shown
    assert seen[0] == {"role": "system", "content": "Be brief."}
    assert seen[-1] == {"role": "user", "content": "What about rivers?"}
    assert seen[1]["role"] == "user"                            # whole turns go, oldest first
    assert len(seen) < 6 and "no longer sees the" in chat.err.getvalue()
    assert chat.messages == typed                               # the transcript keeps everything
    assert ids == chat.prompt_ids()


def test_a_message_too_long_for_the_context_is_an_error_not_a_loss(small_chat):
    from tinyllm.errors import TinyLLMError
    chat = small_chat(system="Be brief.")
    chat.messages.append({"role": "user", "content": "Hi"})
    chat.messages.append({"role": "assistant", "content": "Hello"})
    before = list(chat.messages)
    with pytest.raises(TinyLLMError, match="does not fit the context of 96 tokens"):
        chat.reply("word " * 200)
    assert chat.messages == before                                # earlier turns untouched


def test_commands_validate_and_explain(small_chat, tmp_path):
    chat = small_chat()
    s = chat.sampler.s
    for line in ("/set temp 0.5", "/set top_k 7", "/set top_p 0.9", "/set min_p 0.1", "/set seed 3",
                 "/set n_predict 5", "/set temp -1", "/set top_p 0", "/set top_k x", "/nope", "/set"):
        assert chat.command(line) is True
    assert (s.temperature, s.top_k, s.top_p, s.min_p, s.seed, chat.n_predict) == (0.5, 7, 0.9, 0.1, 3, 5)
    lines = chat.err.getvalue().splitlines()
    assert len(lines) == 11                                      # one line each, no traceback
    assert lines[6].startswith("bad value '-1' for temp") and lines[9].startswith("unknown command /nope")
    assert chat.command("/quit") is False and chat.command("/bye") is False

    chat.messages += [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel", "interrupted": True}]
    chat.command("/system Answer in French.")
    assert chat.messages[0] == {"role": "system", "content": "Answer in French."} and len(chat.messages) == 3
    chat.command(f"/save {tmp_path / 'x.json'}")
    chat.command("/reset")
    assert chat.messages == [{"role": "system", "content": "Answer in French."}]
    chat.command("/system clear")
    assert chat.messages == []
    chat.command(f"/load {tmp_path / 'x.json'}")
    assert chat.system == "Answer in French." and chat.messages[-1]["interrupted"] is True
    (tmp_path / "bad.json").write_text(json.dumps({"messages": [{"role": "wizard", "content": "x"}]}))
    chat.command(f"/load {tmp_path / 'bad.json'}")
    assert chat.messages[-1]["content"] == "Hel" and "not a conversation" in chat.err.getvalue()


# ---- chat templates ------------------------------------------------------------------------

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi! "},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name?"}]


@pytest.fixture(scope="module")
def gemma_tok(gemma3_path):
    from tinyllm.gguf_file import GGUFFile
    from tinyllm.tokenizer import Tokenizer
    g = GGUFFile(gemma3_path)
    return g, Tokenizer.from_gguf(g)


def test_gemma_fallback_is_gemma3_official_format(gemma_tok):
    from tinyllm.chat_template import ChatTemplate
    g, tok = gemma_tok
    assert g.get("tokenizer.chat_template") is None                # a base model: no template
    t = ChatTemplate.for_model(g, tok)
    assert t.builtin and "Gemma" in t.name
    # Gemma 3's format: system text opens the first user turn, the assistant is "model",
    # contents are trimmed, one <bos> at the start
    assert t.render(CONVERSATION) == ("<bos><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n"
                                      "<start_of_turn>model\nHello.<end_of_turn>\n"
                                      "<start_of_turn>user\nName?<end_of_turn>\n<start_of_turn>model\n")
    ids = t.tokenize(CONVERSATION, tok)
    assert ids[:2] == [tok.bos_id, tok.encode("<start_of_turn>", add_bos=False, parse_special=True)[0]]
    assert ids.count(tok.bos_id) == 1
    assert t.turn_start_ids(tok) == {ids[1]}


def test_bos_exactly_once_whoever_writes_it(gemma_tok, smollm2):
    from tinyllm.chat_template import ChatTemplate
    _, gtok = gemma_tok
    msgs = [{"role": "user", "content": "Hi"}]
    without = ChatTemplate("{% for m in messages %}{{ m['content'] }}{% endfor %}", "t")
    with_bos = ChatTemplate("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}", "t",
                            bos_token="<bos>")
    # Gemma wants BOS (add_bos_token true): added when the template does not write it, not doubled when it does
    assert without.tokenize(msgs, gtok) == with_bos.tokenize(msgs, gtok) == [gtok.bos_id] + \
        gtok.encode("Hi", add_bos=False)
    # SmolLM2 does not want one: its own template gives none
    _, stok = smollm2
    own = ChatTemplate.for_model(smollm2[0].gguf, stok)
    ids = own.tokenize(msgs, stok)
    assert not stok.add_bos and ids == stok.encode(own.render(msgs), add_bos=False, parse_special=True)

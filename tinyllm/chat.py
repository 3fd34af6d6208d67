"""`tinyllm chat`: a REPL around one growing conversation.

Each turn renders the whole conversation with the chat template, tokenizes it,
and feeds only the tokens the KV cache does not already hold (generate.Session
finds the common prefix), so a long conversation does not get slower to answer.
Replies stream as they are sampled; after each one a status line shows what it
cost.  Interactive sessions use prompt_toolkit (history, multi-line editing);
piped stdin is read one message per line, replies to stdout, status to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .chat_template import ChatTemplate
from .errors import TinyLLMError
from .generate import Session, Stats

HELP = """commands:
  /help                 this text
  /reset                forget the conversation (keeps the system prompt)
  /system TEXT          set the system prompt (and reset)
  /set NAME VALUE       temp | top_k | top_p | min_p | seed | n_predict | repeat_penalty
  /ctx                  context used / total
  /kv                   KV cache type and cells used / allocated
  /stats                speed of the last reply
  /save FILE            save the conversation as JSON
  /load FILE            load a conversation saved with /save
  /quit                 leave (Ctrl-D too)
multi-line input: end a line with \\ to continue it, or paste; Ctrl-C stops a reply."""


def rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


class Chat:
    def __init__(self, model, tokenizer, sampler, n_predict: int, system: str | None, out=sys.stdout, err=sys.stderr):
        self.model, self.tok, self.sampler = model, tokenizer, sampler
        self.session = Session(model, tokenizer)
        self.template = ChatTemplate.for_model(model.gguf, tokenizer)
        self.n_predict = n_predict
        self.system = system
        self.messages: list = []
        self.last = Stats()
        self.out, self.err = out, err
        self.reset()

    # ---- conversation ----------------------------------------------------------------
    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.session.reset()

    def prompt_ids(self) -> list:
        text = self.template.render(self.messages, add_generation_prompt=True)
        return self.tok.encode(text, parse_special=True)

    def fit_context(self) -> list:
        """Token ids of the conversation; drops the oldest turns (not the system prompt)
        while it leaves less than a reply's worth of room."""
        ids = self.prompt_ids()
        room = min(self.n_predict, self.model.n_ctx // 4)
        while len(ids) + room > self.model.n_ctx:
            first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
            if len(self.messages) - first <= 1:
                raise TinyLLMError(f"message is {len(ids)} tokens; it does not fit the context "
                                   f"({self.model.n_ctx}) with room for a reply; use a larger --ctx")
            del self.messages[first:first + 2]           # one user turn and its reply
            self.info(f"[context full: dropped the oldest turn; {len(self.messages)} messages kept]")
            ids = self.prompt_ids()
        return ids

    def reply(self, user_text: str) -> str:
        self.messages.append({"role": "user", "content": user_text})
        try:
            ids = self.fit_context()
        except TinyLLMError:
            self.messages.pop()
            raise
        stats, pieces = Stats(), []
        try:
            for piece in self.session.generate(ids, self.sampler, self.n_predict, stats=stats):
                pieces.append(piece)
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            stats.stop_reason = "interrupted"
            pieces.append(" [interrupted]")
            self.out.write(" [interrupted]")
        self.out.write("\n")
        text = "".join(pieces)
        self.messages.append({"role": "assistant", "content": text})
        self.last = stats
        self.info(self.status_line())
        return text

    def status_line(self) -> str:
        s, c = self.last, self.model.cache
        return (f"[{s.n_prompt} prompt tok {s.prefill_tok_s:.0f} tok/s | {s.n_gen} tok {s.decode_tok_s:.1f} tok/s"
                f" | ctx {len(self.session.tokens)}/{self.model.n_ctx}"
                f" | KV {c.nbytes_used / 2**20:.1f}/{c.nbytes_allocated / 2**20:.1f} MiB"
                f" | RSS {rss_mib():.0f} MiB]")

    def info(self, msg: str) -> None:
        self.err.write(msg + "\n")
        self.err.flush()

    # ---- commands --------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a /command. Returns False when the user wants to leave."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        s = self.sampler.s
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            self.info(HELP)
        elif name == "reset":
            self.reset()
            self.info("[conversation cleared]")
        elif name == "system":
            self.system = arg or None
            self.reset()
            self.info("[system prompt set; conversation cleared]" if arg else "[system prompt removed]")
        elif name == "set":
            key, _, val = arg.partition(" ")
            setters = {"temp": ("temperature", float), "temperature": ("temperature", float),
                       "top_k": ("top_k", int), "top_p": ("top_p", float), "min_p": ("min_p", float),
                       "repeat_penalty": ("repeat_penalty", float)}
            try:
                if key in setters:
                    attr, conv = setters[key]
                    setattr(s, attr, conv(val))
                elif key == "seed":
                    self.sampler.reseed(int(val))
                elif key == "n_predict":
                    if int(val) <= 0:
                        raise ValueError
                    self.n_predict = int(val)
                else:
                    self.info("usage: /set temp|top_k|top_p|min_p|seed|n_predict|repeat_penalty VALUE")
                    return True
            except ValueError:
                self.info(f"bad value {val!r} for {key}; usage: /set {key} NUMBER")
                return True
            self.info(f"[{key} = {val}]")
        elif name == "ctx":
            self.info(f"[context: {len(self.session.tokens)} / {self.model.n_ctx} tokens]")
        elif name == "kv":
            c = self.model.cache
            self.info(f"[KV cache {c.kv_type}: {c.n_used} cells used, {c.n_cells} allocated, "
                      f"{c.n_ctx} max; {c.nbytes_used / 2**20:.2f} MiB used, "
                      f"{c.nbytes_allocated / 2**20:.2f} MiB allocated]")
        elif name == "stats":
            self.info(self.status_line())
        elif name == "save":
            if not arg:
                self.info("usage: /save FILE")
                return True
            try:
                Path(arg).write_text(json.dumps({"system": self.system, "messages": self.messages}, indent=1))
                self.info(f"[saved {len(self.messages)} messages to {arg}]")
            except OSError as e:
                self.info(f"cannot write {arg}: {e.strerror}")
        elif name == "load":
            try:
                data = json.loads(Path(arg).read_text())
                msgs = data["messages"]
                assert all(m["role"] in ("system", "user", "assistant") and isinstance(m["content"], str)
                           for m in msgs)
            except (OSError, ValueError, KeyError, TypeError, AssertionError):
                self.info(f"cannot load {arg!r}: not a conversation saved with /save")
                return True
            self.system, self.messages = data.get("system"), msgs
            self.session.reset()
            self.info(f"[loaded {len(msgs)} messages from {arg}]")
        else:
            self.info(f"unknown command /{name}; type /help for the list")
        return True


def banner(model, tok, chat: Chat, args) -> str:
    from . import jit
    cfg, g = model.cfg, model.gguf
    n_params = sum(t.n_elements for t in g.tensors.values())
    types = {}
    for t in g.tensors.values():
        types[t.type_name] = types.get(t.type_name, 0) + t.n_bytes
    mix = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(types.items(), key=lambda kv: -kv[1]))
    base = "" if g.get("tokenizer.chat_template") else " (base model: no chat template, it may ramble)"
    return (f"tinyllm chat | {os.path.basename(model.path)} | {cfg.arch}, {n_params / 1e6:.0f}M params"
            f" | {mix}\n  context {model.n_ctx} | KV {model.cache.kv_type} | threads {jit.get_threads()}"
            f" | template: {chat.template.name}{base}\n  type /help for commands, Ctrl-D to quit")


def run_chat(args) -> None:
    from .cli import _sampler, open_model
    model, tok = open_model(args)
    chat = Chat(model, tok, _sampler(args), args.n_predict, args.system)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    chat.info(banner(model, tok, chat, args))
    if not interactive:
        for line in sys.stdin:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.startswith("/"):
                if not chat.command(line):
                    break
                continue
            try:
                chat.reply(line)
            except TinyLLMError as e:
                chat.info(f"error: {e}")
        return

    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    hist = Path(os.environ.get("TINYLLM_HISTORY", Path.home() / ".tinyllm_history"))
    ps = PromptSession(history=FileHistory(str(hist)))
    pending = ""
    while True:
        try:
            line = ps.prompt("... " if pending else ">>> ")
        except KeyboardInterrupt:        # Ctrl-C at the prompt clears the line, does not exit
            pending = ""
            continue
        except EOFError:                 # Ctrl-D
            break
        if line.endswith("\\"):
            pending += line[:-1] + "\n"
            continue
        text, pending = pending + line, ""
        if not text.strip():
            continue
        if text.startswith("/"):
            if not chat.command(text.strip()):
                break
            continue
        try:
            chat.reply(text)
        except TinyLLMError as e:
            chat.info(f"error: {e}")

"""`tinyllm chat`: a REPL around one growing conversation, with its memory in view.

Each turn renders the whole conversation with the chat template, tokenizes it,
and feeds only the tokens the KV cache does not already hold (generate.Session
finds the common prefix), so a long conversation does not get slower to answer.

After the prompt is processed and after each reply one line shows what memory
the process holds and what changed:

    [mem] prompt 37 tok 61.2 tok/s | RSS 262.4 MiB +14.1 | weights 93.1/93.8 MiB | KV 39/256 cells 0.9/5.6 MiB | scratch 6.2 MiB

    RSS       resident set of this process (VmRSS), and its change since the last line
    weights   pages of the memory-mapped GGUF file that are resident / the file's size:
              the kernel pages weights in on first use and may drop them again
    KV        positions held / cells allocated, and their bytes (the cache grows in chunks)
    scratch   activation buffers planned for one batch (memory.scratch_bytes)

`/mem` prints the whole ledger (memory.ledger): planned next to measured, and what
`ollama ps` would show for the same model and settings.

When the conversation no longer leaves room for a reply, the oldest turns are
dropped (the system prompt stays) and the user's new message goes on.

Interactive sessions use prompt_toolkit (history file, multi-line input, Ctrl-C
stops a reply and keeps what was said).  Piped stdin is read one message per line:
replies go to stdout, everything else to stderr, so `tinyllm chat < questions.txt
> answers.txt` works for scripting.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

from . import memory
from .tools.memory import ledger
from .chat_template import ChatTemplate
from .errors import TinyLLMError
from .generate import Session, Stats
from .sampling import describe as describe_sampling

MiB = 1 << 20
INTERRUPTED = " [interrupted]"
SAVE_FORMAT = "tinyllm-chat"

HELP = """commands:
  /help                 this text
  /reset                forget the conversation (keeps the system prompt)
  /system [TEXT]        show or set the system prompt (`/system clear` removes it)
  /set [NAME VALUE]     show settings, or set temp | top_k | top_p | min_p | seed | n_predict | repeat_penalty
  /ctx                  context: tokens used / n_ctx, messages, room left
  /kv                   KV cache: type, cells used / allocated, bytes
  /mem                  memory ledger: planned vs measured, and what Ollama would report
  /stats                speed of the last reply and of the session
  /save FILE            save the whole conversation as JSON (--force: replace FILE)
  /load FILE            load a conversation saved with /save
  /quit                 leave (also /bye, /exit, Ctrl-D)
input: Enter sends; Alt-Enter or a trailing \\ starts a new line; \"\"\" opens and closes a
multi-line block; pasted text keeps its lines.  Ctrl-C stops a reply (the part so far is
kept, marked [interrupted]); Ctrl-C at the prompt clears the line.  //text sends /text."""

COMMANDS = "/help /reset /system /set /ctx /kv /mem /stats /save /load /quit"

# /set NAME -> (SamplerSettings attribute or None, parse, check, what a valid value is)
SETTINGS = {
    "temp": ("temperature", float, lambda v: v >= 0, "a number >= 0 (0 = greedy)"),
    "top_k": ("top_k", int, lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "top_p": ("top_p", float, lambda v: 0 < v <= 1, "a number in (0, 1] (1 = off)"),
    "min_p": ("min_p", float, lambda v: 0 <= v < 1, "a number in [0, 1) (0 = off)"),
    "repeat_penalty": ("repeat_penalty", float, lambda v: v > 0, "a number > 0 (1 = off)"),
    "seed": (None, int, lambda v: v >= 0, "an integer >= 0"),
    "n_predict": (None, int, lambda v: v > 0, "an integer > 0 (tokens per reply)"),
}
SETTING_ALIASES = {"temperature": "temp", "top-k": "top_k", "top-p": "top_p", "min-p": "min_p",
                   "n": "n_predict", "num_predict": "n_predict", "repeat-penalty": "repeat_penalty"}


def mib(n: float) -> str:
    return f"{n / MiB:.1f}"


# ---- memory at every step ---------------------------------------------------------------

class MemoryMeter:
    """Measures this process after each step and formats the one-line summary."""

    def __init__(self, model, n_batch: int, flash_attn: bool | None):
        self.model = model
        self.file_size = os.path.getsize(model.path)
        self.scratch = sum(memory.scratch_bytes(model.cfg, n_batch, model.n_ctx,
                                                flash_attn is not False).values())
        self.prev_rss: int | None = None

    def line(self, what: str) -> str:
        """what: the step, e.g. 'prompt 37 tok 61.2 tok/s'."""
        m = memory.measured(model_path=self.model.path)
        delta = "" if self.prev_rss is None else f" {(m.rss - self.prev_rss) / MiB:+.1f}"
        self.prev_rss = m.rss
        c = self.model.cache
        weights = "" if m.weights_resident is None else \
            f" | weights {mib(m.weights_resident)}/{mib(self.file_size)} MiB"
        return (f"[mem] {what} | RSS {mib(m.rss)} MiB{delta}{weights}"
                f" | KV {c.n_used}/{c.n_cells} cells {mib(c.nbytes_used)}/{mib(c.nbytes_allocated)} MiB"
                f" | scratch {mib(self.scratch)} MiB")


def _isatty(f) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:.1f} tok/s" if seconds > 0 and n else "- tok/s"


# ---- the conversation ---------------------------------------------------------------------

class Chat:
    """One conversation with one model: messages, the KV cache that holds them, commands."""

    def __init__(self, model, tokenizer, sampler, n_predict: int = 512, system: str | None = None,
                 runtime_baseline: int = 0, verbose: bool = False, out=None, err=None,
                 color: bool = False, builtin_template: bool = False):
        self.model, self.tok, self.sampler = model, tokenizer, sampler
        self.template = ChatTemplate.for_model(model.gguf, tokenizer, builtin=builtin_template)
        self.template.check()
        # Stop where the model starts a new turn as well as at end-of-generation tokens:
        # a base model otherwise goes on to write the user's next message.
        stop_tok = copy.copy(tokenizer)
        stop_tok.eog_ids = set(tokenizer.eog_ids) | self.template.turn_start_ids(tokenizer)
        self.session = Session(model, stop_tok)
        self.flash_attn = getattr(model.cache, "flash_attn", getattr(model, "flash_attn", None))
        self.meter = MemoryMeter(model, self.session.n_batch, self.flash_attn)
        self.n_predict = n_predict
        self.system = system
        self.runtime_baseline = runtime_baseline
        self.verbose = verbose
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.color = color
        self.tty_break = "\n" if _isatty(self.out) and _isatty(self.err) else ""
        # Everything typed and replied stays in self.messages (what /save writes).  When
        # the context fills, the model stops seeing the oldest turns: `trimmed` counts the
        # messages after the system prompt that are left out of what is rendered.
        self.messages: list = []
        self.trimmed = 0
        self.last = Stats()
        self.totals = {"turns": 0, "prompt": 0, "gen": 0, "t_prompt": 0.0, "t_gen": 0.0, "dropped": 0}
        self.reset()

    # ---- output -----------------------------------------------------------------------
    def info(self, msg: str) -> None:
        """Status for the person (stderr; dimmed on a terminal)."""
        if self.color:
            msg = f"\x1b[2m{msg}\x1b[0m"
        self.err.write(msg + "\n")
        self.err.flush()

    def say(self, text: str) -> None:
        """Reply text (stdout)."""
        self.out.write(text)
        self.out.flush()

    # ---- conversation -----------------------------------------------------------------
    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.trimmed = 0
        self.session.reset()

    def visible(self) -> list:
        """The messages the model sees: the system prompt and the turns not trimmed."""
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        return self.messages[:first] + self.messages[first + self.trimmed:]

    def set_system(self, text: str | None) -> None:
        """Replace the system prompt, keeping the turns (the cache is re-filled next turn)."""
        self.system = text or None
        turns = [m for m in self.messages if m["role"] != "system"]
        self.messages = ([{"role": "system", "content": self.system}] if self.system else []) + turns

    def prompt_ids(self) -> list:
        return self.template.tokenize(self.visible(), self.tok, add_generation_prompt=True)

    def room_for_reply(self) -> int:
        return min(self.n_predict, self.model.n_ctx // 4)

    def fit_context(self) -> list:
        """Token ids of the conversation, after leaving out the oldest turns (never the system
        prompt, never the newest message) until a reply's worth of room is left.  They stay
        in the transcript (self.messages, /save); only the model stops seeing them.  If the
        newest message does not fit even alone, nothing is dropped and TinyLLMError says so."""
        n_ctx, room = self.model.n_ctx, self.room_for_reply()
        msgs = self.visible()
        first = 1 if msgs and msgs[0]["role"] == "system" else 0
        ids = self.template.tokenize(msgs, self.tok)
        while len(ids) + room > n_ctx:
            if len(msgs) - first <= 1:
                raise TinyLLMError(
                    f"this message needs {len(ids)} tokens with the system prompt and template, and "
                    f"a reply needs {room} more: that does not fit the context of {n_ctx} tokens. "
                    f"Shorten it (Up arrow brings it back) or restart with a larger --ctx")
            # one turn: the oldest message and the replies after it, up to the next user message
            end = first + 1
            while end < len(msgs) - 1 and msgs[end]["role"] != "user":
                end += 1
            del msgs[first:end]
            ids = self.template.tokenize(msgs, self.tok)
        dropped = len(self.visible()) - len(msgs)
        if dropped:
            self.trimmed += dropped
            self.totals["dropped"] += dropped
            self.info(f"[context full: the conversation needs more than the {n_ctx}-token context; the model "
                      f"no longer sees the {dropped} oldest message{'s' if dropped > 1 else ''}"
                      f"{', kept the system prompt' if first else ''} (/save still keeps them)"
                      f"; now {len(msgs)} messages in {len(ids)} tokens]")
        return ids

    def reply(self, user_text: str) -> str:
        """Answer user_text, streaming the reply to stdout.  Ctrl-C stops the reply and keeps
        the part so far (marked as interrupted); the user's message is kept either way."""
        self.messages.append({"role": "user", "content": user_text})
        try:
            ids = self.fit_context()
        except TinyLLMError:
            self.messages.pop()
            raise
        stats, pieces = Stats(), []
        t_decode = [0.0]

        def on_prompt(s: Stats) -> None:
            self.info(self.meter.line(f"prompt {s.n_prompt} tok {rate(s.n_prompt, s.t_prompt)}"))
            t_decode[0] = time.perf_counter()

        def on_token(_tok: int) -> None:
            # Called when token n has been sampled: n - 1 decode steps are done (the first
            # token's logits came from the prompt).  On a terminal the line interrupts the
            # reply being written, so it gets a line of its own.
            dt = time.perf_counter() - t_decode[0]
            midline = self.tty_break if pieces and not pieces[-1].endswith("\n") else ""
            self.info(midline + self.meter.line(f"token {stats.n_gen} {rate(stats.n_gen - 1, dt)}"))

        interrupted = False
        try:
            for piece in self.session.generate(ids, self.sampler, self.n_predict, stats=stats,
                                               on_token=on_token if self.verbose else None,
                                               on_prompt=on_prompt):
                pieces.append(piece)
                self.say(piece)
        except KeyboardInterrupt:
            interrupted = True
            stats.stop_reason = "interrupted"
            if t_decode[0]:
                stats.t_gen = time.perf_counter() - t_decode[0]
        except Exception:
            # an error inside the model: the turn did not happen, and what the cache holds is
            # unknown, so it is emptied (the next turn re-reads the conversation)
            self.messages.pop()
            self.session.reset()
            raise
        text = "".join(pieces)
        msg = {"role": "assistant", "content": text}
        if interrupted:
            msg["interrupted"] = True
            self.say(INTERRUPTED)
        self.messages.append(msg)
        self.say("\n")
        self.last = stats
        t = self.totals
        t["turns"] += 1
        t["prompt"] += stats.n_prompt
        t["gen"] += stats.n_gen
        t["t_prompt"] += stats.t_prompt
        t["t_gen"] += stats.t_gen
        self.info(self.meter.line(f"reply {stats.n_gen} tok {rate(stats.n_gen, stats.t_gen)}"))
        if stats.stop_reason == "context full":
            self.info(f"[context full: the reply was cut at the {self.model.n_ctx}-token limit; "
                      f"the oldest turns will be dropped before the next one]")
        elif stats.stop_reason == "length":
            self.info(f"[reply stopped at n_predict = {self.n_predict} tokens; /set n_predict N for longer]")
        return text

    # ---- commands ---------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a /command; one line of help for anything wrong.  False: the user wants to leave."""
        name, _, arg = line.strip()[1:].partition(" ")
        name, arg = name.lower(), arg.strip()
        if name in ("quit", "exit", "bye", "q"):
            return False
        fn = getattr(self, f"cmd_{name}", None) if name.isidentifier() else None
        if fn is None:
            self.info(f"unknown command /{name}; commands: {COMMANDS} (/help explains them)")
            return True
        try:
            fn(arg)
        except TinyLLMError as e:
            self.info(f"/{name}: {e}")
        except Exception as e:  # a REPL must not die on a command: say what happened in one line
            self.info(f"/{name} failed: {type(e).__name__}: {e}")
        return True

    def cmd_help(self, arg: str) -> None:
        self.info(HELP)

    def cmd_reset(self, arg: str) -> None:
        self.reset()
        self.info("[conversation cleared" + (", system prompt kept]" if self.system else "]"))

    def cmd_system(self, arg: str) -> None:
        if not arg:
            self.info(f"[system prompt: {self.system!r}]" if self.system else
                      "[no system prompt; /system TEXT sets one]")
        elif arg.lower() in ("clear", "none", "off"):
            self.set_system(None)
            self.info("[system prompt removed]")
        else:
            self.set_system(arg)
            self.info("[system prompt set; the conversation goes on with it]")

    def settings(self) -> str:
        s = self.sampler.s
        return (f"temp {s.temperature:g} | top_k {s.top_k} | top_p {s.top_p:g} | min_p {s.min_p:g} | "
                f"repeat_penalty {s.repeat_penalty:g} | seed {s.seed} | n_predict {self.n_predict}")

    def cmd_set(self, arg: str) -> None:
        key, _, val = arg.partition(" ")
        key, val = SETTING_ALIASES.get(key.lower(), key.lower()), val.strip()
        usage = "usage: /set temp|top_k|top_p|min_p|seed|n_predict|repeat_penalty VALUE"
        if not key:
            self.info(f"[{self.settings()}]")
            return
        if key not in SETTINGS:
            self.info(f"unknown setting {key!r}; {usage}")
            return
        attr, parse, ok, valid = SETTINGS[key]
        try:
            v = parse(val)
            if not ok(v):
                raise ValueError
        except ValueError:
            self.info(f"bad value {val!r} for {key}: it must be {valid}")
            return
        if key == "seed":
            self.sampler.reseed(v)
        elif key == "n_predict":
            self.n_predict = v
        else:
            setattr(self.sampler.s, attr, v)
            self.sampler.s.sources[attr] = "/set"
        self.info(f"[{key} = {v}]")

    def cmd_ctx(self, arg: str) -> None:
        n_conv = len(self.template.tokenize(self.visible(), self.tok, add_generation_prompt=False)) \
            if self.visible() else 0
        n_ctx = self.model.n_ctx
        self.info(f"[context: the conversation is {n_conv} of {n_ctx} tokens ({100 * n_conv / n_ctx:.0f}%) in "
                  f"{len(self.visible())} messages; the KV cache holds {len(self.session.tokens)}; a reply "
                  f"reserves {self.room_for_reply()}; {self.totals['dropped']} messages dropped so far]")

    def cmd_kv(self, arg: str) -> None:
        c = self.model.cache
        fa = {True: "on", False: "off"}.get(self.flash_attn, "n/a")
        self.info(f"[KV cache {c.kv_type}: {c.n_used} cells used of {c.n_cells} allocated (n_ctx {c.n_ctx}); "
                  f"{mib(c.nbytes_used)} MiB used of {mib(c.nbytes_allocated)} MiB allocated; "
                  f"flash attention {fa}]")

    def cmd_mem(self, arg: str) -> None:
        led = ledger(self.model.gguf, self.model.n_ctx, self.model.cache.kv_type,
                            n_batch=self.session.n_batch, flash_attn=self.flash_attn is not False,
                            n_tokens=len(self.session.tokens),
                            runtime_baseline_bytes=self.runtime_baseline)
        self.info(led.table())

    def cmd_stats(self, arg: str) -> None:
        s, t = self.last, self.totals
        self.info(f"[last reply: prompt {s.n_prompt} tok {rate(s.n_prompt, s.t_prompt)}, reply {s.n_gen} tok "
                  f"{rate(s.n_gen, s.t_gen)}, stopped by {s.stop_reason or '-'}]")
        peak = memory.measured().peak_rss
        self.info(f"[session: {t['turns']} replies, prompt {t['prompt']} tok {rate(t['prompt'], t['t_prompt'])}, "
                  f"generated {t['gen']} tok {rate(t['gen'], t['t_gen'])}"
                  + (f", peak RSS {mib(peak)} MiB]" if peak else "]"))

    def cmd_save(self, arg: str) -> None:
        force = arg.startswith("--force ")
        arg = arg[len("--force "):].strip() if force else arg
        if not arg:
            self.info("usage: /save FILE  (/save --force FILE replaces an existing file)")
            return
        # the whole transcript; the turns the model no longer sees are marked "trimmed"
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        msgs = [dict(m, trimmed=True) if first <= i < first + self.trimmed else m
                for i, m in enumerate(self.messages)]
        data = {"format": SAVE_FORMAT, "version": 1, "model": os.path.basename(self.model.path),
                "system": self.system, "messages": msgs}
        text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
        path = Path(arg).expanduser()
        try:
            if force:
                path.write_text(text, encoding="utf-8")
            else:
                with open(path, "x", encoding="utf-8") as f:     # "x": never over an existing file
                    f.write(text)
        except FileExistsError:
            self.info(f"[{arg} exists; not overwritten. /save --force {arg} replaces it]")
            return
        except OSError as e:
            self.info(f"cannot write {arg}: {e.strerror}")
            return
        note = f", {self.trimmed} of them trimmed from the context" if self.trimmed else ""
        self.info(f"[saved {len(self.messages)} messages to {arg}{note}]")

    def cmd_load(self, arg: str) -> None:
        if not arg:
            self.info("usage: /load FILE")
            return
        try:
            data = json.loads(Path(arg).expanduser().read_text(encoding="utf-8"))
            msgs = data["messages"]
            system = data.get("system")
            if not (isinstance(msgs, list) and all(
                    isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                    and isinstance(m.get("content"), str) for m in msgs)
                    and (system is None or isinstance(system, str))):
                raise ValueError
        except OSError as e:
            self.info(f"cannot read {arg}: {e.strerror}")
            return
        except (ValueError, KeyError, TypeError, AttributeError):
            self.info(f"cannot load {arg}: not a conversation saved with /save")
            return
        self.system = system
        self.messages = [{k: v for k, v in m.items() if k != "trimmed"} for m in msgs]
        if system and not (msgs and msgs[0]["role"] == "system"):
            self.messages.insert(0, {"role": "system", "content": system})
        # what was trimmed when it was saved stays out of the model's view (the oldest turns)
        self.trimmed = sum(1 for m in msgs if m.get("trimmed") and m["role"] != "system")
        self.session.reset()
        self.info(f"[loaded {len(msgs)} messages from {arg}; they are read into the cache with the next message]")


# ---- start-up -----------------------------------------------------------------------------

def load(args, log):
    """Open the model named in args, kernels not yet warm (warm_kernels).  Returns (model,
    tokenizer, runtime baseline bytes)."""
    from . import jit                      # imports numba: part of the runtime baseline  # noqa: F401
    from .startup import open_model

    baseline = memory.measure_runtime_baseline()   # before the GGUF is opened
    model, tok = open_model(args.model, n_ctx=getattr(args, "ctx", None),
                            kv_type=getattr(args, "kv_type", "f16"),
                            flash_attn=getattr(args, "flash_attn", "on") == "on",
                            threads=getattr(args, "threads", None), progress=log, warm=False,
                            mem_check=not getattr(args, "no_mem_check", False))
    return model, tok, baseline


def banner(model, chat: Chat) -> str:
    from . import jit
    g, cfg = model.gguf, model.cfg
    n_params = sum(t.n_elements for t in g.tensors.values())
    mix = ", ".join(f"{k} {mib(v)}" for k, v in memory.weights_by_type(g).items())
    name = g.get("general.name") or os.path.basename(model.path)
    fa = {True: "on", False: "off"}.get(chat.flash_attn, "n/a")
    if chat.template.forced:
        fmt = chat.template.name
    elif chat.template.builtin:
        fmt = (f"{chat.template.name} -- this is a base model (its GGUF has no chat template): "
               f"it was not trained to chat, so replies may wander")
    else:
        fmt = chat.template.name
    return "\n".join([
        f"tinyllm chat: {name} ({os.path.basename(model.path)}, {mib(os.path.getsize(model.path))} MiB)",
        f"  {cfg.arch}, {n_params / 1e6:.1f}M parameters, {cfg.n_layer} layers | weights (MiB): {mix}",
        f"  context {model.n_ctx} tokens | KV cache {model.cache.kv_type} | flash attention {fa} | "
        f"{jit.get_threads()} threads",
        f"  chat format: {fmt}",
        f"  sampling: {describe_sampling(chat.sampler.s)}",
    ])


def warm_kernels(model, info) -> None:
    """Load the kernels from numba's disk cache, or compile them (first run) with one
    progress line per kernel (startup.warm_model)."""
    from .startup import warm_model
    t0 = time.perf_counter()
    warm_model(model, progress=lambda line: info("  " + line))
    info(f"  kernels: ready ({time.perf_counter() - t0:.1f} s)")


# ---- the loops ----------------------------------------------------------------------------

def clean_input(text: str, info) -> str:
    """Text as typed, with bytes that are not UTF-8 replaced by U+FFFD (and a note saying so).

    Python reads such bytes from stdin as lone surrogates ('surrogateescape'), which no
    tokenizer can encode; the bytes are recovered and decoded with replacement instead."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        fixed = raw.decode("utf-8", "replace")
        n = fixed.count("\ufffd") - text.count("\ufffd")
        info(f"[the input was not valid UTF-8: {n} invalid byte sequence{'s' if n != 1 else ''} "
             f"replaced with U+FFFD]")
        return fixed.encode("utf-8", "replace").decode("utf-8")   # anything left: replaced too


def run_piped(chat: Chat, lines) -> None:
    """One message per line; /commands work too.  Replies to stdout, status to stderr."""
    for line in lines:
        line = clean_input(line.rstrip("\r\n"), chat.info)
        if not line.strip():
            continue
        if line.startswith("/") and not line.startswith("//"):
            if not chat.command(line):
                break
            continue
        try:
            chat.reply(line[1:] if line.startswith("//") else line)
        except TinyLLMError as e:
            chat.info(f"error: {e}")


def _key_bindings():
    from prompt_toolkit.key_binding import KeyBindings
    kb = KeyBindings()

    @kb.add("escape", "enter")          # Alt-Enter: a new line inside the message
    def _(event):
        event.current_buffer.insert_text("\n")

    return kb


def read_message(ps) -> str | None:
    """One message from the terminal (None: Ctrl-D).  A line ending in \\ continues on the
    next; a line starting with \"\"\" opens a block that the next \"\"\" closes."""
    lines, block = [], False
    while True:
        try:
            line = ps.prompt("... " if lines or block else ">>> ")
        except KeyboardInterrupt:       # Ctrl-C at the prompt: drop the half-typed message
            if not lines and not block:
                sys.stderr.write("(Ctrl-D or /quit to leave)\n")
            return ""
        except EOFError:                # Ctrl-D
            return None if not lines and not block else "\n".join(lines)
        if not lines and not block and line.lstrip().startswith('"""'):
            line = line.lstrip()[3:]
            block = True
        if block:
            if line.rstrip().endswith('"""'):
                lines.append(line.rstrip()[:-3])
                return "\n".join(lines).strip("\n")
            lines.append(line)
            continue
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        lines.append(line)
        return "\n".join(lines)


def run_interactive(chat: Chat) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    hist = Path(os.environ.get("TINYLLM_HISTORY", Path.home() / ".tinyllm_history")).expanduser()
    try:
        hist.parent.mkdir(parents=True, exist_ok=True)
        history = FileHistory(str(hist))
    except OSError:
        from prompt_toolkit.history import InMemoryHistory
        history = InMemoryHistory()
    ps = PromptSession(history=history, key_bindings=_key_bindings())
    while True:
        text = read_message(ps)
        if text is None:
            break
        if not text.strip():
            continue
        text = clean_input(text, chat.info)
        try:
            if text.startswith("/") and not text.startswith("//"):
                if not chat.command(text):
                    break
                continue
            chat.reply(text[1:] if text.startswith("//") else text)
        except TinyLLMError as e:
            chat.info(f"error: {e}")
        except KeyboardInterrupt:       # a second Ctrl-C while a status line was printed
            chat.info("[interrupted]")
        except Exception as e:          # a bug must not take the conversation with it
            if os.environ.get("TINYLLM_DEBUG"):
                import traceback
                traceback.print_exc()
            chat.info(f"internal error: {type(e).__name__}: {e} -- the conversation is kept "
                      f"(TINYLLM_DEBUG=1 shows the traceback)")


def run_chat(args) -> None:
    if hasattr(sys.stdin, "reconfigure"):
        # bytes that are not UTF-8 reach clean_input() as surrogates instead of raising
        sys.stdin.reconfigure(errors="surrogateescape")
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    err_tty = sys.stderr.isatty()

    def log(msg: str) -> None:
        print(f"\x1b[2m{msg}\x1b[0m" if err_tty else msg, file=sys.stderr, flush=True)

    from .sampling import sampler_from_args as _sampler
    model, tok, baseline = load(args, log)
    chat = Chat(model, tok, _sampler(args, model.gguf), args.n_predict, args.system, runtime_baseline=baseline,
                verbose=getattr(args, "verbose", False), color=err_tty,
                builtin_template=getattr(args, "builtin_template", False))
    chat.info(banner(model, chat))
    warm_kernels(model, chat.info)
    chat.info(chat.meter.line("loaded"))
    if interactive:
        chat.info("type /help for commands, Ctrl-D or /quit to leave")
        run_interactive(chat)
    else:
        try:
            run_piped(chat, sys.stdin)
        except KeyboardInterrupt:       # Ctrl-C between replies ends a scripted session
            raise SystemExit(130) from None

"""`tinyllm serve`: Ollama's HTTP API (and OpenAI's chat completions) over tinyllm.

A client written for Ollama -- the `ollama` Python package, the `openai` package
pointed at /v1, Open WebUI, LangChain -- talks to tinyllm by changing nothing but
its base URL, and moves to a bigger Ollama or llama-server box the same way.

    tinyllm serve [MODEL ...] [--host 127.0.0.1] [--port 11434]

The wire formats, as Ollama's clients read them (docs/ollama-api.md has the study):

    /api/*   JSON; streamed replies are NDJSON, one object per line, with
             "stream" true unless the request says false.  Durations are in
             nanoseconds.  The last object has "done": true, "done_reason"
             ("stop" or "length") and the counts and timings.  Errors are
             {"error": "..."} with an HTTP status, or that object as the last
             line of a stream already under way.
    /v1/*    OpenAI's shapes; streamed replies are server-sent events,
             "data: {chunk}\\n\\n" ending with "data: [DONE]\\n\\n".

How requests are served:

    - One generation at a time per model.  A model is one Session (generate.py)
      with one KV cache, so requests for it wait in line (first come, first
      served); a request for another model runs beside it if that model could
      be loaded.  A conversation that goes on where the last request left off
      reuses the cached prefix: only the new tokens are computed.
    - A model loads on first use (the first MODEL given is loaded at start-up),
      if the memory check allows; models idle for their keep_alive (default 5
      minutes, as Ollama) are unloaded, and idle models make room for a new one.
    - A client that disconnects stops its generation at the next token; so does
      Ctrl-C, which then shuts the server down.
    - Request bodies (MAX_BODY) and replies (the context left) are bounded;
      bad input is an HTTP error, never a crash of the server.

The HTTP parsing is waitress's (a pure-Python WSGI server, `pip install
tinyllm[serve]`): each request runs in one of its worker threads, which is why
the code below is plain blocking Python.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .errors import TinyLLMError

MiB = 1 << 20
MAX_BODY = 8 * MiB                 # a request body larger than this is refused (413)
DEFAULT_KEEP_ALIVE = 300.0         # seconds an idle model stays loaded (Ollama's 5m)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class HTTPError(Exception):
    """A request that cannot be served: becomes {"error": message} with this status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Stopped(Exception):
    """Raised from the token callback: the client went away or the server is stopping."""


# ---- small parsers ------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value, default: float) -> float:
    """Ollama's keep_alive -> seconds; inf for "forever" (a negative value).

    A number is seconds; a string is a Go duration ("5m", "1h30m", "10s") or a
    number of seconds; None keeps the default; 0 unloads once the reply is done.
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise HTTPError(400, f"invalid keep_alive {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        s = value.strip()
        sign = -1.0 if s.startswith("-") else 1.0
        s = s.lstrip("+-")
        try:
            seconds = sign * float(s)
        except ValueError:
            parts = _DURATION.findall(s)
            if not parts or "".join(a + b for a, b in parts) != s:
                raise HTTPError(400, f"invalid keep_alive duration {value!r}") from None
            seconds = sign * sum(float(n) * _UNIT[u] for n, u in parts)
    else:
        raise HTTPError(400, f"invalid keep_alive {value!r}")
    return float("inf") if seconds < 0 else seconds


def ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def now_rfc3339(t: float | None = None) -> str:
    """Ollama's created_at: UTC, RFC 3339 with fractional seconds and Z."""
    d = datetime.fromtimestamp(time.time() if t is None else t, timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def base_name(name: str) -> str:
    """'smollm2-135m:latest' -> 'smollm2-135m': tinyllm has one version of each model."""
    return name[:-len(":latest")] if name.endswith(":latest") else name


def jsonable(v):
    """A GGUF metadata value as JSON (numpy scalars and arrays become numbers and lists)."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


# ---- the memory check ---------------------------------------------------------------------

def mem_available() -> int | None:
    """What this process can still use (memory.available_bytes: MemAvailable, or what
    `ulimit -v` leaves); None where neither is known."""
    from . import memory
    return memory.available_bytes()[0]


def memory_needed(path: str, n_ctx: int, kv_type: str, flash_attn: bool) -> int:
    """What loading a model adds to this process at most, from its header: the same
    figure `run` and `chat` check before loading (memory.load_bytes: the mapped file, a
    full KV cache, one batch of scratch, tokenizer tables, kernels)."""
    from . import memory
    from .gguf_file import GGUFFile
    plan = memory.MemoryPlan.from_gguf(GGUFFile(path), n_ctx, kv_type, 256, flash_attn,
                                       n_tokens=n_ctx, count_tokenizer=False)
    return memory.load_bytes(plan)


# ---- the models ---------------------------------------------------------------------------

class Line:
    """One model's queue: requests take turns in arrival order; one holds the model at a time.

    A waiter whose client goes away (or a server that stops) leaves the line
    without ever holding it, so the requests behind it do not wait for nothing.
    """

    def __init__(self):
        self.cond = threading.Condition()
        self.waiting: deque = deque()
        self.busy = False

    def acquire(self, give_up=lambda: False) -> None:
        me = object()
        with self.cond:
            self.waiting.append(me)
            try:
                while self.busy or self.waiting[0] is not me:
                    if give_up():
                        raise Stopped()
                    self.cond.wait(0.25)
            finally:
                self.waiting.remove(me)
                self.cond.notify_all()
            self.busy = True

    def try_acquire(self) -> bool:
        """Hold the model if nobody holds it or waits for it (to unload it)."""
        with self.cond:
            if self.busy or self.waiting:
                return False
            self.busy = True
            return True

    def release(self) -> None:
        with self.cond:
            self.busy = False
            self.cond.notify_all()

    @property
    def idle(self) -> bool:
        with self.cond:
            return not self.busy and not self.waiting


@dataclass
class Loaded:
    """A model in memory: its Session (KV cache and the tokens in it) and chat template."""
    name: str
    path: str
    model: object
    tokenizer: object
    template: object
    session: object
    plan: object                   # memory.MemoryPlan at full context: /api/ps's figures
    loaded_at: float
    keep_alive: float = DEFAULT_KEEP_ALIVE
    last_used: float = field(default_factory=time.time)

    @property
    def n_ctx(self) -> int:
        return self.model.n_ctx

    @property
    def expires_at(self) -> float:
        return self.last_used + self.keep_alive


class Models:
    """The servable models (name -> path), the loaded ones, and their queues."""

    def __init__(self, paths: dict, n_ctx: int | None, kv_type: str, flash_attn: bool,
                 threads: int | None, keep_alive: float, stopping: threading.Event):
        self.paths = paths
        self.n_ctx, self.kv_type, self.flash_attn, self.threads = n_ctx, kv_type, flash_attn, threads
        self.keep_alive = keep_alive
        self.stopping = stopping
        self.loaded: dict[str, Loaded] = {}
        self.lines = {name: Line() for name in paths}
        self.lock = threading.Lock()           # guards self.loaded
        self._digests: dict = {}

    def resolve(self, name) -> str:
        """A request's model name -> the name tinyllm serves it under, or 404."""
        if not isinstance(name, str) or not name:
            raise HTTPError(400, "model is required")
        n = base_name(name)
        if n not in self.paths:
            raise HTTPError(404, f"model '{name}' not found")
        return n

    # ---- loading and unloading: called by the holder of the model's Line ----
    def ensure(self, name: str, n_ctx: int | None) -> tuple[Loaded, float]:
        """The loaded model (loading it, or reloading it for another num_ctx).
        Returns (it, seconds spent loading)."""
        want = n_ctx or self.n_ctx
        lm = self.loaded.get(name)
        if lm is not None and (want is None or lm.n_ctx == want):
            return lm, 0.0
        if lm is not None:
            self.unload(name, why=f"reloading with num_ctx {want}")
        t0 = time.perf_counter()
        lm = self._load(name, want)
        return lm, time.perf_counter() - t0

    def _load(self, name: str, n_ctx: int | None) -> Loaded:
        from . import memory
        from .chat_template import ChatTemplate
        from .cli import open_model
        from .generate import Session
        path = self.paths[name]
        if n_ctx is not None and n_ctx <= 0:
            raise HTTPError(400, f"num_ctx must be positive, got {n_ctx}")
        self._make_room(name, path, n_ctx)
        args = argparse.Namespace(model=path, ctx=n_ctx, kv_type=self.kv_type,
                                  flash_attn="on" if self.flash_attn else "off", threads=self.threads)
        log(f"loading {name} ({os.path.basename(path)}) ...")
        try:
            model, tok = open_model(args, quiet=True)
        except TinyLLMError as e:
            raise HTTPError(500, str(e)) from None
        template = ChatTemplate.for_model(model.gguf, tok)
        # stop where the model opens a new turn, as `tinyllm chat` does
        stop_tok = copy.copy(tok)
        stop_tok.eog_ids = set(tok.eog_ids) | template.turn_start_ids(tok)
        plan = memory.MemoryPlan.from_gguf(model.gguf, model.n_ctx, self.kv_type, 256, self.flash_attn,
                                           n_tokens=model.n_ctx, tokenizer=tok,
                                           kernels_bytes=model.kernels_bytes)
        lm = Loaded(name, path, model, tok, template, Session(model, stop_tok), plan, time.time(),
                    self.keep_alive)
        with self.lock:
            self.loaded[name] = lm
        log(f"loaded {name}: context {model.n_ctx}, KV {self.kv_type}")
        return lm

    def _make_room(self, name: str, path: str, n_ctx: int | None) -> None:
        """The memory check before a load: evict idle models, oldest first, until the new
        one fits in MemAvailable; if it still does not fit, refuse (Ollama's message)."""
        try:
            need = memory_needed(path, n_ctx or 2048, self.kv_type, self.flash_attn)
        except TinyLLMError as e:
            raise HTTPError(500, str(e)) from None
        while True:
            avail = mem_available()
            if avail is None or need <= avail:
                return
            with self.lock:
                idle = sorted((lm for n, lm in self.loaded.items() if n != name and self.lines[n].idle),
                              key=lambda lm: lm.last_used)
            if not idle:
                raise HTTPError(500, f"model requires more system memory ({need / MiB:.1f} MiB) "
                                     f"than is available ({avail / MiB:.1f} MiB)")
            self.unload_if_idle(idle[0].name, why="making room")

    def unload(self, name: str, why: str = "") -> None:
        import gc
        with self.lock:
            lm = self.loaded.pop(name, None)
        if lm is not None:
            del lm
            gc.collect()          # the KV cache and the file's mapping go now, not later
            log(f"unloaded {name}" + (f" ({why})" if why else ""))

    def expire(self) -> None:
        """Unload every idle model whose keep_alive has run out."""
        now = time.time()
        with self.lock:
            due = [n for n, lm in self.loaded.items() if lm.expires_at <= now and self.lines[n].idle]
        for n in due:
            self.unload_if_idle(n, why="keep_alive expired")

    def unload_if_idle(self, name: str, why: str) -> None:
        """Unload a model unless a request holds it or waits for it."""
        line = self.lines[name]
        if line.try_acquire():
            try:
                self.unload(name, why=why)
            finally:
                line.release()

    # ---- facts for /api/tags, /api/show, /api/ps ----
    def digest(self, name: str) -> str:
        from .registry import load_registry, sha256_file
        path = self.paths[name]
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime)
        if key not in self._digests:
            entry = load_registry()["models"].get(name)
            same = entry and Path(path).name == entry["file"] and st.st_size == entry["size"]
            self._digests[key] = entry["sha256"] if same else sha256_file(Path(path))
        return self._digests[key]

    def details(self, g) -> dict:
        import gguf
        arch = g.get("general.architecture", "")
        n_params = sum(t.n_elements for t in g.tensors.values())
        try:
            quant = gguf.LlamaFileType(int(g.get("general.file_type"))).name.replace("MOSTLY_", "")
        except (TypeError, ValueError):
            quant = "unknown"
        size = f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{n_params / 1e6:.2f}M"
        return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch],
                "parameter_size": size, "quantization_level": quant}


# ---- requests -----------------------------------------------------------------------------

def sampler_from(options: dict) -> dict:
    """Ollama's options (or OpenAI's fields) -> the sampling values the request sets, checked.
    The sampler itself is made once the model is loaded (sampler_for), since an unset
    value takes the model's own default: its GGUF's general.sampling.* keys, else the
    registry's recommendation (sampling.model_settings, as `tinyllm run` and `chat` do)."""
    fields = {"temperature": float, "top_k": int, "top_p": float, "min_p": float,
              "repeat_penalty": float, "repeat_last_n": int, "seed": int}
    chosen = {}
    for key, typ in fields.items():
        v = options.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise HTTPError(400, f"option {key} must be a number, got {v!r}")
        chosen[key] = typ(v)
    return chosen


def sampler_for(lm, chosen: dict):
    """The request's values over the loaded model's defaults."""
    from .sampling import Sampler, model_settings
    return Sampler(model_settings(lm.path, lm.model.gguf, chosen))


def stop_strings(v) -> list:
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return [x for x in v if x]
    raise HTTPError(400, f"stop must be a string or a list of strings, got {v!r}")


def message_text(m) -> dict:
    """A chat message -> {"role", "content"} with text content (OpenAI allows a list of parts)."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise HTTPError(400, f"a message needs a role and content: {m!r}"[:200])
    content = m.get("content") or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise HTTPError(400, "only text content is supported")
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    if not isinstance(content, str):
        raise HTTPError(400, "message content must be a string")
    if m.get("images"):
        raise HTTPError(400, "this model does not support images")
    return {"role": m["role"], "content": content}


@dataclass
class Job:
    """One generation, everything decided before the model is touched."""
    name: str
    num_ctx: int | None
    keep_alive: float
    build_ids: object              # (Loaded) -> prompt token ids
    sampler: dict = field(default_factory=dict)   # the request's sampling values (sampler_from)
    num_predict: int | None = None
    stops: list = field(default_factory=list)
    empty: bool = False            # no prompt: only load (or unload) the model


class Server:
    def __init__(self, models: Models, stopping: threading.Event):
        self.models = models
        self.stopping = stopping
        self.ids = 0                   # chatcmpl-N ids of the OpenAI replies

    # ---- WSGI entry point ----
    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        openai = path.startswith("/v1/")
        try:
            if self.stopping.is_set():
                raise HTTPError(503, "server is shutting down")
            route = self.routes().get((method if method != "HEAD" else "GET", path.rstrip("/") or "/"))
            if route is None and method == "GET" and path.startswith("/v1/models/"):
                route = self.v1_model
            if route is None:
                known = {p for (_, p) in self.routes()}
                raise HTTPError(405 if path.rstrip("/") in known else 404,
                                f"{method} {path}: " + ("method not allowed" if path.rstrip("/") in known
                                                        else "not found"))
            return route(environ, start_response)
        except HTTPError as e:
            return self.error(start_response, e.status, e.message, openai)
        except Stopped:
            return self.error(start_response, 503, "request cancelled", openai)
        except Exception as e:          # a bug must not take the server down
            traceback.print_exc()
            return self.error(start_response, 500, f"internal error: {e}", openai)

    def routes(self) -> dict:
        return {("GET", "/"): self.root, ("GET", "/api/version"): self.version,
                ("GET", "/api/tags"): self.tags, ("GET", "/api/ps"): self.ps,
                ("POST", "/api/show"): self.show, ("POST", "/api/generate"): self.generate,
                ("POST", "/api/chat"): self.chat, ("GET", "/v1/models"): self.v1_models,
                ("POST", "/v1/chat/completions"): self.v1_chat}

    # ---- plumbing ----
    @staticmethod
    def respond(start_response, status: int, obj, content_type="application/json"):
        body = obj if isinstance(obj, bytes) else (json.dumps(obj) + "\n").encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  413: "Payload Too Large", 500: "Internal Server Error",
                  503: "Service Unavailable"}.get(status, "Error")
        start_response(f"{status} {reason}", [("Content-Type", content_type),
                                              ("Content-Length", str(len(body)))])
        return [body]

    def error(self, start_response, status: int, message: str, openai: bool = False):
        if openai:     # OpenAI's error object, which the openai client turns into APIError
            kind = "invalid_request_error" if status < 500 else "api_error"
            obj = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        else:
            obj = {"error": message}
        return self.respond(start_response, status, obj)

    @staticmethod
    def body(environ) -> dict:
        try:
            n = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HTTPError(400, "bad Content-Length") from None
        if n > MAX_BODY:
            raise HTTPError(413, f"request body of {n} bytes is over the limit of {MAX_BODY}")
        raw = environ["wsgi.input"].read(n) if n else b""
        try:
            obj = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"invalid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        return obj

    @staticmethod
    def gone(environ):
        """A function that says whether the client has disconnected (waitress tells us)."""
        return environ.get("waitress.client_disconnected") or (lambda: False)

    def stream(self, start_response, chunks, content_type: str, on_close):
        start_response("200 OK", [("Content-Type", content_type), ("Cache-Control", "no-cache")])
        return Stream(chunks, on_close)

    # ---- GET endpoints ----
    def root(self, environ, start_response):
        return self.respond(start_response, 200, b"tinyllm is running", "text/plain; charset=utf-8")

    def version(self, environ, start_response):
        return self.respond(start_response, 200, {"version": __version__})

    def model_entry(self, name: str) -> dict:
        from .gguf_file import GGUFFile
        path = self.models.paths[name]
        lm = self.models.loaded.get(name)
        g = lm.model.gguf if lm else GGUFFile(path)
        return {"name": f"{name}:latest", "model": f"{name}:latest",
                "modified_at": now_rfc3339(os.path.getmtime(path)), "size": os.path.getsize(path),
                "digest": self.models.digest(name), "details": self.models.details(g)}

    def tags(self, environ, start_response):
        return self.respond(start_response, 200, {"models": [self.model_entry(n) for n in self.models.paths]})

    def ps(self, environ, start_response):
        """Ollama's /api/ps, with tinyllm's ledger: `size` is the planned resident memory
        with the KV cache as it is now; `tinyllm` has the KV cache used and allocated."""
        from . import memory
        out = []
        with self.models.lock:
            loaded = list(self.models.loaded.items())
        for name, lm in sorted(loaded, key=lambda kv: -kv[1].expires_at):
            n_tokens = len(lm.session.tokens)
            plan = lm.plan.at(n_tokens)
            shape = plan.shape
            allocated = sum(L.k.nbytes + L.v.nbytes for L in lm.model.cache.layers)
            used = memory.kv_cache_bytes(shape, lm.n_ctx, plan.kv_type, n_tokens, chunk=1)
            entry = self.model_entry(name)
            entry.update(size=int(plan.rss), size_vram=0, context_length=lm.n_ctx,
                         expires_at=now_rfc3339(min(lm.expires_at, 253402300799)))
            entry["tinyllm"] = {"tokens_in_cache": n_tokens, "kv_type": plan.kv_type,
                                "kv_used": int(used), "kv_allocated": int(allocated),
                                "kv_full": int(plan.kv_full), "weights_file": int(plan.file_bytes),
                                "peak": int(plan.peak), "busy": not self.models.lines[name].idle}
            out.append(entry)
        return self.respond(start_response, 200, {"models": out})

    def v1_models(self, environ, start_response):
        data = [{"id": f"{n}:latest", "object": "model", "created": int(os.path.getmtime(p)),
                 "owned_by": "tinyllm"} for n, p in self.models.paths.items()]
        return self.respond(start_response, 200, {"object": "list", "data": data})

    def v1_model(self, environ, start_response):
        name = self.models.resolve(environ["PATH_INFO"][len("/v1/models/"):])
        return self.respond(start_response, 200, {"id": f"{name}:latest", "object": "model",
                                                  "created": int(os.path.getmtime(self.models.paths[name])),
                                                  "owned_by": "tinyllm"})

    # ---- /api/show ----
    def show(self, environ, start_response):
        from .chat_template import ChatTemplate
        from .gguf_file import GGUFFile
        from .sampling import model_settings
        req = self.body(environ)
        name = self.models.resolve(req.get("model") or req.get("name"))
        lm = self.models.loaded.get(name)
        g = lm.model.gguf if lm else GGUFFile(self.models.paths[name])
        verbose = bool(req.get("verbose"))
        # Ollama leaves the big tokenizer arrays out unless asked (verbose)
        info = {k: (jsonable(v) if verbose or not hasattr(v, "__len__") or isinstance(v, str) or len(v) <= 64
                    else None) for k, v in g.metadata.items()}
        info["general.parameter_count"] = sum(t.n_elements for t in g.tensors.values())
        src = g.get("tokenizer.chat_template") or ""
        if not src:
            from .tokenizer import Tokenizer
            src = ChatTemplate.for_model(g, Tokenizer.from_gguf(g)).source
        s = model_settings(self.models.paths[name], g)
        params = "\n".join(f"{k:<16}{v}" for k, v in (("temperature", s.temperature), ("top_k", s.top_k),
                                                      ("top_p", s.top_p), ("min_p", s.min_p)))
        modelfile = f"# tinyllm serves this model from a GGUF file\nFROM {self.models.paths[name]}\n" \
                    f"TEMPLATE \"\"\"{src}\"\"\"\n" + "".join(f"PARAMETER {line}\n" for line in params.splitlines())
        return self.respond(start_response, 200, {
            "modelfile": modelfile, "parameters": params, "template": src,
            "details": self.models.details(g), "model_info": info, "capabilities": ["completion"],
            "modified_at": now_rfc3339(os.path.getmtime(self.models.paths[name]))})

    # ---- generation: /api/generate, /api/chat, /v1/chat/completions ----
    def _options(self, req: dict) -> dict:
        opts = req.get("options") or {}
        if not isinstance(opts, dict):
            raise HTTPError(400, "options must be an object")
        return opts

    def _num_ctx(self, opts: dict) -> int | None:
        v = opts.get("num_ctx")
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise HTTPError(400, f"num_ctx must be a positive integer, got {v!r}")
        return v

    def _num_predict(self, v) -> int | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise HTTPError(400, f"num_predict must be an integer, got {v!r}")
        return None if v < 0 else v         # -1 (Ollama: no limit) and -2 (fill): the context left

    @staticmethod
    def _unsupported(req: dict) -> None:
        if req.get("tools"):
            raise HTTPError(400, f"{req.get('model')} does not support tools")
        if req.get("format"):
            raise HTTPError(400, "structured output (format) is not supported by tinyllm")
        if req.get("images"):
            raise HTTPError(400, "this model does not support images")
        if req.get("suffix"):
            raise HTTPError(400, f"{req.get('model')} does not support insert (suffix)")

    def generate(self, environ, start_response):
        req = self.body(environ)
        self._unsupported(req)
        name = self.models.resolve(req.get("model"))
        opts = self._options(req)
        prompt, system, raw = req.get("prompt") or "", req.get("system"), bool(req.get("raw"))
        context = req.get("context") or []
        if not isinstance(prompt, str) or (system is not None and not isinstance(system, str)):
            raise HTTPError(400, "prompt and system must be strings")
        if not isinstance(context, list) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                    for t in context):
            raise HTTPError(400, "context must be a list of token ids")

        def build_ids(lm: Loaded) -> list:
            n_vocab = lm.model.cfg.n_vocab
            if any(not 0 <= t < n_vocab for t in context):
                raise HTTPError(400, f"context holds token ids outside the vocabulary (0..{n_vocab - 1})")
            if raw:
                return list(context) + lm.tokenizer.encode(prompt, add_bos=None if not context else False,
                                                           parse_special=True)
            msgs = ([{"role": "system", "content": system}] if system else []) + \
                   [{"role": "user", "content": prompt}]
            ids = lm.template.tokenize(msgs, lm.tokenizer)
            if context and lm.tokenizer.bos_id is not None and ids[:1] == [lm.tokenizer.bos_id]:
                ids = ids[1:]          # the context already starts with BOS
            return list(context) + ids

        job = Job(name, self._num_ctx(opts), parse_keep_alive(req.get("keep_alive"), self.models.keep_alive),
                  build_ids, sampler_from(opts), self._num_predict(opts.get("num_predict")),
                  stop_strings(opts.get("stop")), empty=not prompt and not context)
        return self.run(environ, start_response, job, req.get("model"), req.get("stream", True) is not False,
                        "generate")

    def chat(self, environ, start_response):
        req = self.body(environ)
        self._unsupported(req)
        name = self.models.resolve(req.get("model"))
        opts = self._options(req)
        messages = req.get("messages") or []
        if not isinstance(messages, list):
            raise HTTPError(400, "messages must be a list")
        msgs = [message_text(m) for m in messages]
        job = Job(name, self._num_ctx(opts), parse_keep_alive(req.get("keep_alive"), self.models.keep_alive),
                  lambda lm: lm.template.tokenize(msgs, lm.tokenizer), sampler_from(opts),
                  self._num_predict(opts.get("num_predict")), stop_strings(opts.get("stop")),
                  empty=not msgs)
        return self.run(environ, start_response, job, req.get("model"), req.get("stream", True) is not False,
                        "chat")

    def v1_chat(self, environ, start_response):
        req = self.body(environ)
        if req.get("tools"):
            raise HTTPError(400, f"{req.get('model')} does not support tools")
        if (req.get("n") or 1) != 1:
            raise HTTPError(400, "n must be 1")
        name = self.models.resolve(req.get("model"))
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPError(400, "messages must be a non-empty list")
        msgs = [message_text(m) for m in messages]
        opts = {k: req.get(k) for k in ("temperature", "top_p", "seed")}
        max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
        so = req.get("stream_options") or {}
        job = Job(name, None, self.models.keep_alive, lambda lm: lm.template.tokenize(msgs, lm.tokenizer),
                  sampler_from(opts), self._num_predict(max_tokens), stop_strings(req.get("stop")))
        return self.run(environ, start_response, job, req.get("model"), bool(req.get("stream")), "openai",
                        include_usage=isinstance(so, dict) and bool(so.get("include_usage")))

    def run(self, environ, start_response, job: Job, model_name: str, streaming: bool, api: str,
            include_usage: bool = False):
        """Queue for the model, load it, check the prompt, then generate (streaming or not).
        Everything that can go wrong before the first token is an HTTP error status."""
        t_start = time.perf_counter()
        gone = self.gone(environ)
        line = self.models.lines[job.name]
        line.acquire(give_up=lambda: gone() or self.stopping.is_set())
        released = [False]

        def release():
            if not released[0]:
                released[0] = True
                lm = self.models.loaded.get(job.name)
                if lm is not None:
                    lm.last_used = time.time()
                    lm.keep_alive = job.keep_alive
                line.release()
                if job.keep_alive == 0:
                    self.models.unload(job.name, why="keep_alive 0")
        try:
            lm, t_load = self.models.ensure(job.name, job.num_ctx)
            if job.empty:          # Ollama: a request without a prompt loads (or unloads) the model
                release()
                reason = "unload" if job.keep_alive == 0 else "load"
                obj = {"model": model_name, "created_at": now_rfc3339(), "done": True, "done_reason": reason}
                obj.update({"message": {"role": "assistant", "content": ""}} if api == "chat" else {"response": ""})
                return self.respond(start_response, 200, obj)
            try:
                ids = job.build_ids(lm)
            except TinyLLMError as e:
                raise HTTPError(400, str(e)) from None
            if len(ids) >= lm.n_ctx:
                raise HTTPError(400, f"the prompt is {len(ids)} tokens, and the context is {lm.n_ctx}: "
                                     f"nothing is left for a reply (shorten it or raise num_ctx)")
            room = lm.n_ctx - len(ids)
            n_predict = room if job.num_predict is None else min(job.num_predict, room)
        except BaseException:
            release()
            raise

        def pieces():
            """(text, None) per piece, then (None, final fields) once."""
            from . import jit
            from .generate import Stats
            stats = Stats()
            if self.models.threads:    # numba's thread count is per thread: this worker's too
                jit.set_threads(self.models.threads)

            def on_token(_tok):
                if gone() or self.stopping.is_set():
                    raise Stopped()
            try:
                for piece in lm.session.generate(ids, sampler_for(lm, job.sampler), n_predict, job.stops, stats,
                                                 on_token=on_token):
                    yield piece, None
            except (Stopped, TinyLLMError, GeneratorExit):
                raise
            except Exception:
                lm.session.reset()      # what the cache holds after a failure is unknown
                raise
            reason = "stop" if stats.stop_reason in ("eog", "stop string") else "length"
            final = {"done_reason": reason, "total_duration": ns(time.perf_counter() - t_start),
                     "load_duration": ns(t_load), "prompt_eval_count": len(ids),
                     "prompt_eval_duration": ns(stats.t_prompt), "eval_count": stats.n_gen,
                     "eval_duration": ns(stats.t_gen)}
            if api == "generate":
                final["context"] = list(lm.session.tokens)
            yield None, final

        self.ids += 1
        if api == "openai":
            chunks = self.openai_chunks(pieces(), model_name, f"chatcmpl-{self.ids}", streaming, include_usage)
        else:
            chunks = self.ollama_chunks(pieces(), model_name, api, streaming)
        if not streaming:
            try:       # the whole reply, then one JSON object
                body = b"".join(chunks)
            except Stopped:
                release()
                raise HTTPError(503, "generation stopped: the client went away or the server is stopping") from None
            except TinyLLMError as e:
                release()
                raise HTTPError(400, str(e)) from None
            except BaseException:
                release()
                raise
            release()
            return self.respond(start_response, 200, body)
        return self.stream(start_response, chunks,
                           "text/event-stream" if api == "openai" else "application/x-ndjson", release)

    @staticmethod
    def ollama_chunks(pieces, model_name: str, api: str, streaming: bool):
        """NDJSON lines (streaming) or one object (not): never a blank line, which the
        `ollama` client would fail to parse."""
        def obj(text, final=None):
            o = {"model": model_name, "created_at": now_rfc3339()}
            o.update({"message": {"role": "assistant", "content": text}} if api == "chat" else {"response": text})
            o["done"] = final is not None
            o.update(final or {})
            return (json.dumps(o) + "\n").encode()
        parts = []
        try:
            for text, final in pieces:
                if final is None:
                    if streaming:
                        if text:
                            yield obj(text)
                    else:
                        parts.append(text)
                else:
                    yield obj("" if streaming else "".join(parts), final)
        except TinyLLMError as e:
            if not streaming:
                raise
            yield (json.dumps({"error": str(e)}) + "\n").encode()

    @staticmethod
    def openai_chunks(pieces, model_name: str, cid: str, streaming: bool, include_usage: bool):
        created = int(time.time())
        head = {"id": cid, "created": created, "model": model_name, "system_fingerprint": "fp_tinyllm"}

        def sse(o):
            return b"data: " + json.dumps(o).encode() + b"\n\n"
        parts = []
        try:
            for text, final in pieces:
                if final is None:
                    if streaming and text:
                        yield sse({**head, "object": "chat.completion.chunk", "choices": [
                            {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]})
                    parts.append(text)
                    continue
                usage = {"prompt_tokens": final["prompt_eval_count"], "completion_tokens": final["eval_count"],
                         "total_tokens": final["prompt_eval_count"] + final["eval_count"]}
                if not streaming:
                    yield json.dumps({**head, "object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                         "finish_reason": final["done_reason"]}], "usage": usage}).encode()
                    return
                yield sse({**head, "object": "chat.completion.chunk", "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""},
                     "finish_reason": final["done_reason"]}]})
                if include_usage:
                    yield sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
                yield b"data: [DONE]\n\n"
        except TinyLLMError as e:
            if not streaming:
                raise
            yield sse({"error": {"message": str(e), "type": "api_error", "param": None, "code": None}})


class Stream:
    """A streamed response body.  waitress iterates it in the request's thread and calls
    close() when it is done or the client has gone; close() hands the model to the next
    request in line, whether or not the body was ever iterated."""

    def __init__(self, chunks, on_close):
        self.chunks, self.on_close = chunks, on_close

    def __iter__(self):
        try:
            yield from self.chunks
        except Stopped:
            return

    def close(self):
        try:
            self.chunks.close()
        finally:
            self.on_close()


# ---- the command --------------------------------------------------------------------------

def add_arguments(p) -> None:
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="registry names or .gguf paths to serve (default: every model in models/); "
                        "the first is loaded at start-up")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=11434, help="port (default 11434, Ollama's)")
    p.add_argument("--ctx", "-c", type=int, default=None,
                   help="context length when a request does not set num_ctx (default 2048)")
    p.add_argument("--kv-type", default="f16", choices=["f32", "f16", "q8_0", "q4_0"],
                   help="KV cache storage type (default f16)")
    p.add_argument("--flash-attn", default="on", choices=["on", "off"])
    p.add_argument("--keep-alive", default="5m",
                   help="how long an idle model stays loaded (Go duration or seconds; -1 = forever)")
    p.add_argument("--threads", "-t", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--http-threads", type=int, default=8,
                   help="requests handled at once, queued ones included (default 8)")


def servable(names: list) -> dict:
    """name -> path: the MODELs given, or every model in models/."""
    from .registry import list_models, load_registry, resolve
    if not names:
        paths = {name: path for name, path, present, _ in list_models() if present}
        if not paths:
            raise TinyLLMError("no models in models/; run: tinyllm pull smollm2-135m, or name a .gguf file")
        return paths
    reg = load_registry()["models"]
    out = {}
    for n in names:
        path = resolve(n, pull_if_missing=True, log=log)
        name = n if n in reg else Path(path).stem
        out[name] = path
    return out


def run(args) -> None:
    try:
        import waitress
    except ImportError:
        raise TinyLLMError("tinyllm serve needs waitress: pip install 'tinyllm[serve]'") from None
    try:
        keep_alive = parse_keep_alive(args.keep_alive, DEFAULT_KEEP_ALIVE)
    except HTTPError as e:
        raise TinyLLMError(f"--keep-alive: {e.message}") from None
    if not 0 < args.port < 65536:
        raise TinyLLMError(f"--port must be 1..65535, got {args.port}")
    if args.host not in LOOPBACK:
        log(f"warning: listening on {args.host}: anyone who can reach this address can use the models "
            f"(there is no authentication); the default 127.0.0.1 keeps it to this machine")
    stopping = threading.Event()
    models = Models(servable(args.models), args.ctx, args.kv_type, args.flash_attn == "on",
                    args.threads, keep_alive, stopping)
    try:
        server = waitress.create_server(Server(models, stopping), host=args.host, port=args.port,
                                        threads=args.http_threads, channel_request_lookahead=1,
                                        max_request_body_size=MAX_BODY, ident="tinyllm")
    except OSError as e:          # before the slow part: a busy port fails at once
        raise TinyLLMError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None

    if args.models:                   # requests wait in the socket's backlog meanwhile
        first = next(iter(models.paths))
        try:
            models.ensure(first, None)
        except HTTPError as e:
            raise TinyLLMError(e.message) from None

    def expire_loop():
        while not stopping.wait(1.0):
            models.expire()
    threading.Thread(target=expire_loop, name="keep_alive", daemon=True).start()

    def on_signal(signum, frame):
        # every generation stops at its next token; waitress then closes its sockets and threads
        stopping.set()
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log(f"tinyllm serve: {', '.join(models.paths)} on http://{args.host}:{server.effective_port} "
        f"(Ollama API at /api, OpenAI API at /v1); Ctrl-C stops")
    server.run()          # returns once a signal has stopped it
    stopping.set()
    for name in list(models.loaded):
        models.unload(name, why="shutting down")
    log("tinyllm serve: stopped")

"""The draftedit pyfunc over HTTP, hardened so that a team can expose it (`draftedit serve model`).

Two request formats: MLflow's (below) and OpenAI's (`POST /v1/completions`, `POST /v1/chat/completions`,
`GET /v1/models`; schema in components/openai_api.py, streaming as server-sent events; docs/serving.md
says what differs from vLLM and SGLang). Both go through one decoding thread that batches concurrent
requests (components/batching.py).

Why not `mlflow models serve`, which this replaced: its scoring server drops parameters it does not
know with a warning (a misspelled `gen_lenght` answered 200 with the default), puts the Python
traceback, with server paths, in error bodies, caps neither prompts, prompt length nor gen_length,
and its timeout answers 504 while the worker keeps decoding. This app keeps MLflow's request format
(POST /invocations with one of `inputs`, `dataframe_split`, `dataframe_records`, `instances`, plus
`params`; answer `{"predictions": [...]}`) and adds:

* errors as JSON `{"error_code": ..., "message": ...}`, one line, no traceback and no path (those go
  to the server's log, with an id the answer quotes);
* unknown or misspelled parameters and wrong types rejected with 400, naming the parameter;
* limits (`conf/serve/default.yaml`) checked before any decoding: body size, prompts per request and
  tokens per prompt (413), gen_length (400);
* one decoding thread, so memory stays bounded whatever the load (one batch of at most
  max_batch_prompts prompts), behind a bounded queue (503); each request has a deadline, checked
  between decoding steps, so a request that times out (504) stops its decoding instead of computing on
  for nobody, and leaves the other requests of its batch decoding.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import threading
import time
import weakref
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from components import openai_api as oa
from components.batching import Batcher, Expired, Job, QueueFull, ShuttingDown
from components.config import check_min, check_positive, conf_defaults
from components.tracking.pyfunc import DecodingStopped, DraftEditModel, RequestRejected

log = logging.getLogger("draftedit.serving")
INPUT_KEYS = ("inputs", "dataframe_split", "dataframe_records", "instances")


@dataclass
@conf_defaults("serve/default.yaml")
class ServeConfig:
    """Limits of the model server; see conf/serve/default.yaml for what each one answers."""

    max_prompts: int
    max_prompt_tokens: int
    max_gen_length: int
    max_body_bytes: int
    request_timeout_s: float
    max_waiting: int
    max_batch_prompts: int
    batch_wait_ms: float
    model_name: Optional[str]

    def __post_init__(self) -> None:
        for name in ("max_prompts", "max_prompt_tokens", "max_gen_length", "max_body_bytes", "max_batch_prompts"):
            check_min(f"serve.{name}", getattr(self, name), 1)
        check_min("serve.max_waiting", self.max_waiting, 0)
        check_min("serve.batch_wait_ms", self.batch_wait_ms, 0)
        check_positive("serve.request_timeout_s", self.request_timeout_s)
        if self.model_name is not None and not self.model_name.strip():
            raise ValueError("serve.model_name must be a non-empty name or null (the registered model's name)")


class HTTPError(Exception):
    """An answer other than 200, with MLflow's error body fields."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _prompt_rows(payload: Any) -> tuple[list[Any], dict | None]:
    """The prompt values and params of an MLflow-style request body (not yet checked one by one)."""
    if not isinstance(payload, dict):
        raise RequestRejected(f"the body must be a JSON object with one of {', '.join(INPUT_KEYS)}")
    unknown = sorted(set(payload) - {*INPUT_KEYS, "params"})
    given = [k for k in INPUT_KEYS if k in payload]
    if unknown:
        raise RequestRejected(f"unknown field {', '.join(map(repr, unknown))}; allowed: {', '.join(INPUT_KEYS)}, params")
    if len(given) != 1:
        raise RequestRejected(f"give exactly one of {', '.join(INPUT_KEYS)}; got {given or 'none'}")
    params = payload.get("params")
    if params is not None and not isinstance(params, dict):
        raise RequestRejected("'params' must be a JSON object")
    key, data = given[0], payload[given[0]]
    if key == "inputs" and isinstance(data, dict):
        if set(data) != {"prompt"}:
            raise RequestRejected(f"'inputs' needs exactly the key 'prompt'; got {sorted(data)}")
        data = data["prompt"]
        return ([data] if isinstance(data, str) else data), params
    if key == "dataframe_split":
        if not isinstance(data, dict) or data.get("columns") != ["prompt"] or not isinstance(data.get("data"), list):
            raise RequestRejected("'dataframe_split' needs columns ['prompt'] and a list of rows in 'data'")
        return [row[0] if isinstance(row, list) and len(row) == 1 else row for row in data["data"]], params
    if key in ("dataframe_records", "instances") and isinstance(data, list):
        return [row["prompt"] if isinstance(row, dict) and set(row) == {"prompt"} else row for row in data], params
    if key in ("inputs", "instances") and isinstance(data, (list, str)):
        return ([data] if isinstance(data, str) else data), params
    raise RequestRejected(f"'{key}' must hold a list of prompts")


class ModelServer:
    """Request handling without HTTP: parse, check the limits, queue for the decoding thread, answer."""

    def __init__(self, model: DraftEditModel, cfg: ServeConfig, model_name: str | None = None) -> None:
        self.model, self.cfg = model, cfg
        # the name OpenAI clients give as "model": the setting, else the caller's (the registered model)
        self.model_name = cfg.model_name or model_name or Path(getattr(model, "checkpoint_dir", "draftedit")).name
        self.stopping = threading.Event()  # set at shutdown: the decoding in progress stops
        self.batcher = Batcher(model.generate, cfg.max_batch_prompts, cfg.batch_wait_ms / 1000, cfg.max_waiting,
                               self.stopping)

    # ---------------------------------------------------------------- MLflow's /invocations
    def parse(self, body: bytes) -> tuple[list[str], dict | None]:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestRejected(f"the body is not valid JSON ({exc.__class__.__name__}: {str(exc)[:80]})") from None
        prompts, params = _prompt_rows(payload)
        if not isinstance(prompts, list):
            raise RequestRejected("the prompts must be a list of strings")
        if len(prompts) > self.cfg.max_prompts:
            raise RequestRejected(f"{len(prompts)} prompts in one request, above this server's limit of "
                                  f"{self.cfg.max_prompts}", status=413)
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p]
        if not prompts or bad:
            raise RequestRejected(f"every prompt must be a non-empty string; rows {bad[:5]} are not" if bad
                                  else "no prompts given")
        return prompts, params

    def submit(self, job: Job) -> Job:
        """Queue a job for the decoding thread; HTTPError 503 when full or stopping."""
        try:
            return self.batcher.submit(job)
        except ShuttingDown:
            raise HTTPError(503, "TEMPORARILY_UNAVAILABLE", "the server is shutting down") from None
        except QueueFull:
            raise HTTPError(503, "TEMPORARILY_UNAVAILABLE", "the server is busy; retry later") from None

    def finish(self, job: Job):
        """The job's result; HTTPError 504/503 when its deadline passed or the server stopped first."""
        try:
            result = self.batcher.wait(job)
        except ShuttingDown:
            raise HTTPError(503, "TEMPORARILY_UNAVAILABLE", "the server is shutting down") from None
        except Expired:
            raise HTTPError(504, "DEADLINE_EXCEEDED", f"no answer within {self.cfg.request_timeout_s:g} s "
                            "(waiting for earlier requests)") from None
        return result

    def handle(self, body: bytes) -> tuple[int, dict]:
        """(status, JSON body) for one /invocations request; never raises."""
        deadline = time.monotonic() + self.cfg.request_timeout_s
        try:
            prompts, params = self.parse(body)
            cfg = self.model.decode_config(params)  # an unknown parameter fails before the request waits
            ids = self.model.encode(prompts, chat=params.get("chat", True) if params else True)
            self.model.check_request(ids, cfg, max_prompt_tokens=self.cfg.max_prompt_tokens,
                                     max_gen_length=self.cfg.max_gen_length)
            result = self.finish(self.submit(Job(ids, cfg, deadline)))
            if any(result.stopped):
                raise DecodingStopped()
            rows = []
            for seq, forwards in zip(result.sequences, result.forwards):
                rows.append({"completion": self.model.tokenizer.decode(seq, skip_special_tokens=True),
                             "tokens": len(seq), "forwards": int(forwards),
                             "tpf": len(seq) / forwards if forwards else 0.0})
            return 200, {"predictions": rows}
        except RequestRejected as exc:
            code = "REQUEST_TOO_LARGE" if exc.status == 413 else "INVALID_PARAMETER_VALUE"
            return exc.status, {"error_code": code, "message": str(exc)}
        except HTTPError as exc:
            return exc.status, {"error_code": exc.code, "message": exc.message}
        except DecodingStopped:
            if self.stopping.is_set():
                return 503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "the server is shutting down"}
            return 504, {"error_code": "DEADLINE_EXCEEDED",
                         "message": f"no answer within {self.cfg.request_timeout_s:g} s; decoding was stopped"}
        except Exception:  # a bug, not the request: details go to the log only
            ref = secrets.token_hex(4)
            log.exception("request %s failed", ref)
            return 500, {"error_code": "INTERNAL_ERROR", "message": f"internal error (reference {ref} in the server log)"}

    # ---------------------------------------------------------------- OpenAI's /v1
    def prepare(self, kind: str, body: bytes) -> OpenAICall:
        """A checked /v1 request with its token ids and DecodeConfig; OpenAIError when it cannot be served."""
        req = oa.parse_request(kind, oa.parse_body(body))
        if req.model is not None and req.model != self.model_name:
            raise oa.OpenAIError(404, f"the model {req.model!r} does not exist; this server serves {self.model_name!r}",
                                 param="model", code="model_not_found")
        fields = dict(req.decode)
        if req.max_tokens is not None:
            if req.max_tokens > self.cfg.max_gen_length:
                raise oa.OpenAIError(400, f"max_tokens {req.max_tokens} is above this server's limit of "
                                     f"{self.cfg.max_gen_length}", param="max_tokens", code="invalid_value")
            fields["gen_length"] = req.max_tokens
        cfg = self._decode_config(req, fields)
        if req.max_tokens is None and cfg.gen_length > self.cfg.max_gen_length:  # the preset's, capped
            cfg = self._decode_config(req, {**fields, "gen_length": self.cfg.max_gen_length})
        if cfg.temperature == 0 and cfg.seed is not None:  # greedy ignores the seed: let it batch with the rest
            cfg = dataclasses.replace(cfg, seed=None)
        ids = self._encode(req)
        rows = [p for p in ids for _ in range(req.n)]
        if len(rows) > self.cfg.max_prompts:
            raise oa.OpenAIError(400, f"{len(ids)} prompts x n={req.n} is {len(rows)} answers, above this server's "
                                 f"limit of {self.cfg.max_prompts}", param="n" if req.n > 1 else "prompt",
                                 code="invalid_value")
        try:
            self.model.check_request(rows, cfg, max_prompt_tokens=self.cfg.max_prompt_tokens)
        except RequestRejected as exc:
            raise oa.OpenAIError(400, str(exc), param=req.prompt_param, code="context_length_exceeded") from None
        return OpenAICall(req, rows, cfg, prompt_tokens=sum(len(p) for p in ids),
                          texts=[oa.StopText(req.stop) for _ in rows], finished=[None] * len(rows))

    def _decode_config(self, req: oa.OpenAIRequest, fields: dict):
        try:
            return self.model.preset_config(req.preset, **fields)
        except RequestRejected as exc:
            message = str(exc)
            named = [k for k in ("max_tokens", *oa.DECODE_FIELDS, "temperature", "top_p", "seed")
                     if k in message or (k == "max_tokens" and "gen_length" in message)]
            raise oa.OpenAIError(400, message, param=(named or ["preset"])[0], code="invalid_value") from None

    def _encode(self, req: oa.OpenAIRequest) -> list[list[int]]:
        if req.kind == "chat":
            try:
                text = self.model.tokenizer.apply_chat_template(req.messages)
            except ValueError as exc:
                raise oa.OpenAIError(400, str(exc).splitlines()[0], param="messages", code="invalid_value") from None
            return [self.model.tokenizer.encode(text)]
        if isinstance(req.prompts[0], str):  # text is completed as it is: no chat template (as OpenAI, vLLM)
            return [self.model.tokenizer.encode(p) for p in req.prompts]
        return [list(p) for p in req.prompts]

    def run(self, call: OpenAICall, on_update=None, cancel: threading.Event | None = None) -> list[oa.Choice]:
        """Decode a prepared call and return its choices; `on_update(choice, text, finish_reason)` hears of
        every new piece of finished text (from the decoding thread). OpenAIError on a deadline or shutdown."""
        deadline = time.monotonic() + self.cfg.request_timeout_s
        return self.collect(call, self.start(call, deadline, on_update, cancel))

    def start(self, call: OpenAICall, deadline: float, on_update=None, cancel: threading.Event | None = None,
              on_finish=None) -> Job:
        """Queue a prepared call (OpenAIError 503 when the queue is full); `collect` waits for it, and
        `on_finish()` is called (from the decoding thread) once it is over, after its last `on_update`."""
        tok, eos, texts = self.model.tokenizer, self.model.lm.config.eos_token_id, call.texts

        def on_block(i: int, tokens: list[int], done: bool) -> None:
            delta = texts[i].feed(tok.decode(tokens, skip_special_tokens=True), final=done)
            finish = None
            if texts[i].stopped or done:
                finish = "stop" if texts[i].stopped or (eos is not None and eos in tokens) else "length"
                call.finished[i] = (tokens, finish)
            if on_update is not None and (delta or finish):
                on_update(i, delta, finish)

        job = Job(call.ids, call.cfg, deadline, on_block=on_block, row_done=lambda i: call.finished[i] is not None,
                  on_finish=on_finish)
        if cancel is not None:
            job.cancel = cancel
        try:
            return self.submit(job)
        except HTTPError as exc:
            raise oa.OpenAIError(exc.status, exc.message,
                                 code="unavailable" if self.stopping.is_set() else "server_busy") from None

    def collect(self, call: OpenAICall, job: Job) -> list[oa.Choice]:
        try:
            result = self.finish(job)
        except HTTPError as exc:
            raise oa.OpenAIError(exc.status, exc.message, code="timeout" if exc.status == 504 else "unavailable") from None
        if any(f is None for f in call.finished):
            if self.stopping.is_set():
                raise oa.OpenAIError(503, "the server is shutting down", code="unavailable")
            if job.cancel.is_set():
                raise oa.OpenAIError(499, "the client closed the request", code="cancelled")
            raise oa.OpenAIError(504, f"no answer within {self.cfg.request_timeout_s:g} s; decoding was stopped",
                                 code="timeout")
        return [oa.Choice(text.sent, finish, len(tokens), int(fw), int(ed))
                for text, (tokens, finish), fw, ed in zip(call.texts, call.finished, result.forwards, result.edits)]

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                            "owned_by": "draftedit"}]}


@dataclass
class OpenAICall:
    """A /v1 request ready to decode: one row per answer (prompt x n)."""

    req: oa.OpenAIRequest
    ids: list[list[int]]
    cfg: Any  # DecodeConfig
    prompt_tokens: int
    texts: list[oa.StopText]  # per row: its text so far, cut at the request's stop strings
    finished: list  # per row: None while it decodes, then (tokens, finish_reason)

    def preset(self, model: DraftEditModel) -> str:
        return self.req.preset or model.default_preset


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is above `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _stream(server: ModelServer, call: OpenAICall, job: Job, cancel: threading.Event, updates: asyncio.Queue):
    """The server-sent events of a streamed /v1 answer: a chunk per finished piece of text, then (asked for)
    the usage, then [DONE]. Leaving early (the client went away) stops this request's decoding."""
    req, rid = call.req, oa.new_id(call.req.kind)

    async def events():
        try:
            if req.kind == "chat":  # OpenAI's first chunk of each choice names the role
                for i in range(len(call.ids)):
                    yield oa.sse(oa.chunk(req, rid, server.model_name, i, role=True))
            while True:
                item = await updates.get()
                if item is None:
                    break
                yield oa.sse(oa.chunk(req, rid, server.model_name, *item))
            try:
                choices = await run_in_threadpool(server.collect, call, job)
            except oa.OpenAIError as exc:
                yield oa.sse(exc.body())
            else:
                if req.include_usage:
                    yield oa.sse(oa.usage_chunk(req, rid, server.model_name, choices, call.prompt_tokens,
                                                call.preset(server.model)))
            yield oa.sse("[DONE]")
        finally:
            cancel.set()  # a no-op once decoding ended; otherwise its rows are dropped at the next step

    stream = events()
    weakref.finalize(stream, cancel.set)  # a client gone before the first event: the stream is dropped unstarted
    return stream


def create_app(server: ModelServer):
    """The FastAPI app: /ping, /health, /invocations, /v1/...; every error answer is JSON without internals."""
    @asynccontextmanager
    async def lifespan(_app):
        yield
        server.stopping.set()  # shutting down: the decoding in progress stops at its next step

    app = FastAPI(title="draftedit", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):  # 404, 405: same body shape as the route's own errors
        if request.url.path.startswith("/v1/"):
            return JSONResponse(oa.OpenAIError(exc.status_code, str(exc.detail), code="not_found").body(),
                                status_code=exc.status_code)
        return JSONResponse({"error_code": "NOT_FOUND" if exc.status_code == 404 else "BAD_REQUEST",
                             "message": str(exc.detail)}, status_code=exc.status_code)

    @app.get("/ping")
    @app.get("/health")
    async def ping():
        return JSONResponse({"status": "ok"})

    @app.post("/invocations")
    async def invocations(request: Request):
        limit = server.cfg.max_body_bytes
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if kind != "application/json":
            return JSONResponse({"error_code": "BAD_REQUEST", "message": f"Content-Type must be application/json, "
                                 f"got {kind!r}"}, status_code=415)
        body = await _read_body(request, limit)
        if body is None:
            return JSONResponse({"error_code": "REQUEST_TOO_LARGE",
                                 "message": f"the body is above this server's limit of {limit} bytes"}, status_code=413)
        status, answer = await run_in_threadpool(server.handle, body)
        return JSONResponse(answer, status_code=status)

    @app.get("/v1/models")
    async def models():
        return JSONResponse(server.models())

    async def openai_route(kind: str, request: Request):
        limit = server.cfg.max_body_bytes
        kind_header = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if kind_header != "application/json":
            err = oa.OpenAIError(415, f"Content-Type must be application/json, got {kind_header!r}", code="invalid_json")
            return JSONResponse(err.body(), status_code=415)
        body = await _read_body(request, limit)
        if body is None:
            err = oa.OpenAIError(413, f"the body is above this server's limit of {limit} bytes", code="too_large")
            return JSONResponse(err.body(), status_code=413)
        try:
            call = await run_in_threadpool(server.prepare, kind, body)
        except oa.OpenAIError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        if not call.req.stream:
            status, answer = await run_in_threadpool(_answer_prepared, server, kind, call)
            return JSONResponse(answer, status_code=status)
        loop, updates, cancel = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()

        def on_update(i: int, text: str, finish: str | None) -> None:  # on the decoding thread
            loop.call_soon_threadsafe(updates.put_nowait, (i, text, finish))

        def on_finish() -> None:  # the end marker, after every update
            try:
                loop.call_soon_threadsafe(updates.put_nowait, None)
            except RuntimeError:  # the loop closed: nobody reads the stream any more
                pass

        try:
            job = server.start(call, time.monotonic() + server.cfg.request_timeout_s, on_update, cancel, on_finish)
        except oa.OpenAIError as exc:  # refused before any event: a plain error answer
            return JSONResponse(exc.body(), status_code=exc.status)
        return StreamingResponse(_stream(server, call, job, cancel, updates), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await openai_route("completion", request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await openai_route("chat", request)

    return app


def _answer_prepared(server: ModelServer, kind: str, call: OpenAICall) -> tuple[int, dict]:
    try:
        choices = server.run(call)
        return 200, oa.response(call.req, oa.new_id(kind), server.model_name, choices, call.prompt_tokens,
                                call.preset(server.model))
    except oa.OpenAIError as exc:
        return exc.status, exc.body()
    except Exception:  # a bug, not the request: details go to the log only
        ref = secrets.token_hex(4)
        log.exception("request %s failed", ref)
        return 500, oa.OpenAIError(500, f"internal error (reference {ref} in the server log)",
                                   code="internal_error").body()


@contextmanager
def serving_in_thread(server: ModelServer, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 120.0):
    """The app under uvicorn in a thread of this process (port 0: a free one); yields its base URL, and stops
    the server and joins the thread after. For tests and benchmarks that drive the server with real clients."""
    import uvicorn

    config = uvicorn.Config(create_app(server), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="draftedit-uvicorn", daemon=True)
    thread.start()
    try:
        until = time.monotonic() + startup_timeout_s
        while not uv.started and thread.is_alive() and time.monotonic() < until:
            time.sleep(0.01)
        if not uv.started:
            raise RuntimeError(f"the model server did not start within {startup_timeout_s:g} s")
        bound = uv.servers[0].sockets[0].getsockname()
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        uv.should_exit = True
        thread.join(timeout=60)


def serve(model: DraftEditModel, cfg: ServeConfig, host: str, port: int, model_name: str | None = None) -> None:
    """Run the server until SIGTERM/SIGINT (uvicorn's handlers); in-flight decoding stops at shutdown."""
    import uvicorn

    server = ModelServer(model, cfg, model_name)
    uvicorn.run(create_app(server), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)

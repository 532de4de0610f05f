"""The draftedit pyfunc over HTTP, hardened so that a team can expose it (`draftedit serve model`).

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
* one decoding at a time, so memory stays bounded whatever the load, behind a bounded queue (503);
  each request has a deadline, checked between decoding steps, so a request that times out (504)
  stops its decoding instead of computing on for nobody.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

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

    def __post_init__(self) -> None:
        for name in ("max_prompts", "max_prompt_tokens", "max_gen_length", "max_body_bytes"):
            check_min(f"serve.{name}", getattr(self, name), 1)
        check_min("serve.max_waiting", self.max_waiting, 0)
        check_positive("serve.request_timeout_s", self.request_timeout_s)


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
    """Request handling without HTTP: parse, check the limits, wait for the model, decode."""

    def __init__(self, model: DraftEditModel, cfg: ServeConfig) -> None:
        self.model, self.cfg = model, cfg
        self.stopping = threading.Event()  # set at shutdown: the decoding in progress stops
        self._decode_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._waiting = 0

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

    @contextmanager
    def _turn(self, deadline: float):
        """Wait for the model (one decoding at a time) until `deadline`; 503 when the queue is full."""
        with self._count_lock:
            if self._waiting > self.cfg.max_waiting:  # one decoding plus max_waiting queued
                raise HTTPError(503, "TEMPORARILY_UNAVAILABLE", "the server is busy; retry later")
            self._waiting += 1
        try:
            if not self._decode_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise HTTPError(504, "DEADLINE_EXCEEDED", f"no answer within {self.cfg.request_timeout_s:g} s "
                                "(waiting for earlier requests)")
            try:
                yield
            finally:
                self._decode_lock.release()
        finally:
            with self._count_lock:
                self._waiting -= 1

    def handle(self, body: bytes) -> tuple[int, dict]:
        """(status, JSON body) for one /invocations request; never raises."""
        deadline = time.monotonic() + self.cfg.request_timeout_s
        try:
            prompts, params = self.parse(body)
            self.model.decode_config(params)  # an unknown parameter fails before the request waits
            with self._turn(deadline):
                frame = self.model.complete(
                    prompts, params, max_prompt_tokens=self.cfg.max_prompt_tokens,
                    max_gen_length=self.cfg.max_gen_length,
                    should_stop=lambda: self.stopping.is_set() or time.monotonic() > deadline,
                )
            rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                    for row in frame.to_dict(orient="records")]
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


def create_app(server: ModelServer):
    """The FastAPI app: /ping, /health, /invocations; every error answer is JSON without internals."""
    @asynccontextmanager
    async def lifespan(_app):
        yield
        server.stopping.set()  # shutting down: the decoding in progress stops at its next step

    app = FastAPI(title="draftedit", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc):  # 404, 405: same body shape as ours
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
        declared = request.headers.get("content-length")
        too_large = JSONResponse({"error_code": "REQUEST_TOO_LARGE",
                                  "message": f"the body is above this server's limit of {limit} bytes"}, status_code=413)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return too_large
        status, answer = await run_in_threadpool(server.handle, bytes(body))
        return JSONResponse(answer, status_code=status)

    return app


def serve(model: DraftEditModel, cfg: ServeConfig, host: str, port: int) -> None:
    """Run the server until SIGTERM/SIGINT (uvicorn's handlers); in-flight decoding stops at shutdown."""
    import uvicorn

    server = ModelServer(model, cfg)
    uvicorn.run(create_app(server), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)

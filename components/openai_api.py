"""The OpenAI request and response schema of `draftedit serve model` (/v1/completions, /v1/chat/completions).

Parsing turns a JSON body into an `OpenAIRequest` or raises `OpenAIError`, whose body is OpenAI's error
shape `{"error": {"message", "type", "param", "code"}}`; every field is checked by name and type, so a
misspelled field is a 400 naming it rather than a setting silently ignored. Besides OpenAI's fields a
request may carry draftedit's decoding settings (`DECODE_FIELDS`). The builders write OpenAI's response
and chunk objects, with a `draftedit` section (forwards, tokens per forward, edits) beside `usage`.
`StopText` turns the finished text of a streamed answer into deltas that never show a stop string.

What differs from vLLM and SGLang is in docs/serving.md.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

# draftedit's own settings, as extra body fields: name -> (kind, what it sets)
DECODE_FIELDS = {
    "preset": "string",  # a decoding preset of conf/decode/ (default: the model's serving preset)
    "threshold": "number",  # tau_mask
    "editing_threshold": "number",  # tau_edit
    "editing": "boolean",  # false: no token-to-token editing
    "block_length": "integer",
}
# OpenAI fields served as OpenAI defines them
SUPPORTED = {"model": "string", "max_tokens": "integer", "temperature": "number", "top_p": "number",
             "n": "integer", "stream": "boolean", "stream_options": "object", "stop": "stop", "seed": "integer",
             "user": "string"}
# OpenAI fields accepted only at the value that changes nothing (no log-probabilities, penalties or echo:
# a diffusion decoder has no left-to-right token distribution to report or penalise)
NEUTRAL = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({},), "logprobs": (False, 0),
           "top_logprobs": (0,), "echo": (False,), "best_of": (1,), "suffix": ("",), "parallel_tool_calls": (False,)}
ONLY_FOR = {"completion": {"prompt": "prompt", "echo": None, "best_of": None, "suffix": None},
            "chat": {"messages": "messages", "max_completion_tokens": "integer", "top_logprobs": None,
                     "parallel_tool_calls": None}}
MAX_STOP_STRINGS = 4  # as OpenAI


class OpenAIError(Exception):
    """An answer other than 200 in OpenAI's error shape."""

    TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
             415: "invalid_request_error", 503: "server_error", 504: "timeout", 500: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def _bad(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def _is(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "stop":
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(s, str) for s in value))
    raise AssertionError(kind)


KIND_WORDS = {"string": "a string", "boolean": "true or false", "integer": "an integer", "number": "a number",
              "object": "a JSON object", "stop": "a string or a list of strings"}


@dataclass
class OpenAIRequest:
    """One checked request: the prompts (text, or token ids for a tokenized completions prompt) or the
    chat, and the settings."""

    kind: str  # "completion" or "chat"
    model: str | None
    prompts: list[str] | list[list[int]] | None = None
    messages: list[dict] | None = None
    max_tokens: int | None = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    preset: str | None = None
    decode: dict[str, Any] = field(default_factory=dict)  # DecodeConfig fields the request sets

    @property
    def prompt_param(self) -> str:
        return "prompt" if self.kind == "completion" else "messages"


def parse_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OpenAIError(400, f"the body is not valid JSON ({exc.__class__.__name__}: {str(exc)[:80]})",
                          code="invalid_json") from None


def parse_request(kind: str, payload: Any) -> OpenAIRequest:
    """Check a /v1/completions (`kind` "completion") or /v1/chat/completions ("chat") body field by field."""
    if not isinstance(payload, dict):
        raise OpenAIError(400, "the body must be a JSON object", code="invalid_request")
    own = ONLY_FOR[kind]
    other = ONLY_FOR["chat" if kind == "completion" else "completion"]
    for name in payload:
        if name in other and name not in own:
            raise _bad(name, f"field {name!r} belongs to the other endpoint; see docs/serving.md", "unknown_parameter")
        if name not in SUPPORTED and name not in NEUTRAL and name not in DECODE_FIELDS and name not in own:
            known = sorted({*SUPPORTED, *DECODE_FIELDS, *(k for k, v in own.items() if v)})
            raise _bad(name, f"unknown field {name!r}; this server takes: {', '.join(known)}", "unknown_parameter")
    values = {k: v for k, v in payload.items() if v is not None}  # null means "not given", as in OpenAI
    for name, value in values.items():
        if name in NEUTRAL:
            if not any(type(value) is type(a) and value == a for a in NEUTRAL[name]):
                raise _bad(name, f"field {name!r} is not supported by this server (only {NEUTRAL[name][0]!r}); "
                           "see docs/serving.md", "unsupported_parameter")
            continue
        expected = SUPPORTED.get(name) or DECODE_FIELDS.get(name) or own.get(name)
        if expected in ("prompt", "messages"):
            continue
        if not _is(expected, value):
            raise _bad(name, f"field {name!r} must be {KIND_WORDS[expected]}, got {json.dumps(value)[:40]}")

    req = OpenAIRequest(kind=kind, model=values.get("model"))
    if kind == "completion":
        req.prompts = _prompts(payload.get("prompt"))
    else:
        req.messages = _messages(payload.get("messages"))
    if "max_tokens" in values and "max_completion_tokens" in values:
        raise _bad("max_tokens", "give max_tokens or max_completion_tokens, not both")
    req.max_tokens = values.get("max_tokens", values.get("max_completion_tokens"))
    if req.max_tokens is not None and req.max_tokens < 1:
        raise _bad("max_tokens", f"max_tokens must be at least 1, got {req.max_tokens}")
    req.n = values.get("n", 1)
    if req.n < 1:
        raise _bad("n", f"n must be at least 1, got {req.n}")
    req.stream = values.get("stream", False)
    options = values.get("stream_options", {})
    if options and not req.stream:
        raise _bad("stream_options", "stream_options needs stream: true")
    if set(options) - {"include_usage"} or not isinstance(options.get("include_usage", False), bool):
        raise _bad("stream_options", "stream_options takes only include_usage (true or false)")
    req.include_usage = options.get("include_usage", False)
    stop = values.get("stop", [])
    req.stop = [stop] if isinstance(stop, str) else list(stop)
    if len(req.stop) > MAX_STOP_STRINGS or any(not s for s in req.stop):
        raise _bad("stop", f"stop takes at most {MAX_STOP_STRINGS} non-empty strings")
    req.preset = values.get("preset")
    if "temperature" in values:
        if not 0 <= values["temperature"] <= 2:
            raise _bad("temperature", f"temperature must be in [0, 2], got {values['temperature']}")
        req.decode["temperature"] = float(values["temperature"])
    if "top_p" in values:
        req.decode["top_p"] = float(values["top_p"])
    for name in ("seed", "block_length"):
        if name in values:
            req.decode[name] = values[name]
    for name in ("threshold", "editing_threshold"):
        if name in values:
            req.decode[name] = float(values[name])
    if values.get("editing") is False:
        if "editing_threshold" in values:
            raise _bad("editing", "editing: false turns editing off; do not give editing_threshold with it")
        from components.presets import EDITING_OFF

        req.decode["editing_threshold"] = EDITING_OFF
    return req


def _prompts(prompt: Any) -> list[str] | list[list[int]]:
    """OpenAI's prompt forms: a string, a list of strings, a list of token ids, a list of such lists."""
    def ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(prompt, str):
        prompt = [prompt]
    elif ids(prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise _bad("prompt", "prompt must be a string, a list of strings, or token ids (a list of integers, "
                   "or a list of such lists)", "invalid_type" if prompt is not None else "missing")
    if all(isinstance(p, str) for p in prompt):
        empty = [i for i, p in enumerate(prompt) if not p]
        if empty:
            raise _bad("prompt", f"every prompt must be a non-empty string; prompts {empty[:5]} are empty")
        return prompt
    if all(ids(p) for p in prompt):
        return prompt
    raise _bad("prompt", "prompt must be all strings or all token-id lists (non-empty lists of integers)")


def _messages(messages: Any) -> list[dict]:
    """Chat messages as {"role", "content": text}; content may be a list of text parts, as OpenAI allows."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "messages must be a non-empty list of {role, content} objects",
                   "missing" if messages is None else "invalid_type")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise _bad("messages", f"messages[{i}] must be an object with a string 'role' and a 'content'")
        extra = sorted(set(m) - {"role", "content", "name"})
        if extra:
            raise _bad("messages", f"messages[{i}] has fields this server does not take: {extra}")
        content = m["content"]
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise _bad("messages", f"messages[{i}].content must be a string or a list of text parts")
        out.append({"role": m["role"], "content": content})
    return out


# ---------------------------------------------------------------------------------------- answers
@dataclass
class Choice:
    """One answer: its text (stop strings cut), why it ended, and the decoder's figures."""

    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    tokens: int
    forwards: int
    edits: int


def new_id(kind: str) -> str:
    return ("cmpl-" if kind == "completion" else "chatcmpl-") + secrets.token_hex(12)


def usage(prompt_tokens: int, choices: list[Choice]) -> dict:
    completion = sum(c.tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def draftedit_figures(choices: list[Choice], preset: str) -> dict:
    tokens, forwards = sum(c.tokens for c in choices), sum(c.forwards for c in choices)
    return {"preset": preset, "forwards": forwards, "tokens_per_forward": tokens / forwards if forwards else 0.0,
            "edits": sum(c.edits for c in choices)}


def response(req: OpenAIRequest, rid: str, model: str, choices: list[Choice], prompt_tokens: int,
             preset: str) -> dict:
    """The whole (non-streamed) answer object."""
    if req.kind == "completion":
        items = [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                 for i, c in enumerate(choices)]
        obj = "text_completion"
    else:
        items = [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                  "finish_reason": c.finish_reason} for i, c in enumerate(choices)]
        obj = "chat.completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": items,
            "usage": usage(prompt_tokens, choices), "draftedit": draftedit_figures(choices, preset)}


def chunk(req: OpenAIRequest, rid: str, model: str, index: int, text: str | None = None,
          finish_reason: str | None = None, role: bool = False) -> dict:
    """One streamed chunk of choice `index`: new text, its end, or (chat) the assistant role first."""
    if req.kind == "completion":
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    else:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}


def usage_chunk(req: OpenAIRequest, rid: str, model: str, choices: list[Choice], prompt_tokens: int,
                preset: str) -> dict:
    """The last chunk when stream_options.include_usage: no choices, the usage (and draftedit figures)."""
    obj = "text_completion" if req.kind == "completion" else "chat.completion.chunk"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(prompt_tokens, choices), "draftedit": draftedit_figures(choices, preset)}


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


class StopText:
    """The finished text of one answer, fed as it grows, cut at the first stop string.

    `feed(text)` returns the new part that is safe to show: text that could still turn out to begin a
    stop string (a suffix that is a prefix of one), or an incomplete character, is held back until the
    next feed shows what it is. `stopped` is set once a stop string appears; the text then ends before it."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.sent, self.stopped = stops, "", False

    def feed(self, text: str, final: bool = False) -> str:
        if self.stopped:
            return ""
        cut = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cut:
            text, self.stopped, final = text[:min(cut)], True, True
        safe = len(text)
        if not final:
            while safe and text[safe - 1] == "\ufffd":  # a multi-byte character the next block completes
                safe -= 1
            hold = max((k for s in self.stops for k in range(1, len(s)) if text[:safe].endswith(s[:k])), default=0)
            safe -= hold
        if not text.startswith(self.sent):  # a later block changed how earlier tokens decode (rare)
            if final:
                self.sent = text  # the answer's text is right even if a stream already showed the old form
            return ""
        if safe <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):safe], text[:safe]
        return delta

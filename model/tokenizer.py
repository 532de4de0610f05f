"""Tokenizer for diffusion LMs: a `tokenizers` tokenizer.json plus the special tokens decoding needs.

A masked diffusion model cannot run without a mask token, so loading fails loudly when none is found.
Checkpoints keep their names in `tokenizer_config.json` (Hugging Face layout); our own byte-level BPE
tokenizers are saved in the same layout, with a Jinja chat template equivalent to the built-in one so
that Hugging Face tooling formats chats exactly as we do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from tokenizers import Tokenizer as _Backend

from .files import atomic_write

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

MASK_TOKEN = "<|mask|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
# The special tokens our trainer adds, in id order (pad = 0, eos = 1, mask = 2, then roles).
DEFAULT_SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, MASK_TOKEN, *ROLE_TOKENS.values())

# Names other checkpoints use, tried in order when tokenizer_config.json does not say.
_MASK_CANDIDATES = (MASK_TOKEN, "<|mdm_mask|>", "<mask>", "[MASK]", "<|MASK|>")
_EOS_CANDIDATES = (EOS_TOKEN, "<|endoftext|>", "</s>", "<eos>", "<|im_end|>", "[SEP]")

# Jinja twin of `_builtin_chat_template` (saved into tokenizer_config.json; a test checks they agree).
BUILTIN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)


class TokenizerError(ValueError):
    """The tokenizer files cannot serve a diffusion LM (missing file, missing mask token, ...)."""


def _token_content(value: Any) -> str | None:
    """HF configs store special tokens either as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class Tokenizer:
    """`encode`/`decode` plus `mask_id`, `eos_id`, `pad_id` and chat formatting.

    `encode(text)` parses special-token strings in `text` (needed for chat-formatted prompts);
    `encode(text, parse_special=False)` treats them as plain text (used for raw corpus documents,
    so a file that happens to contain "<|mask|>" can never produce the mask id).
    """

    def __init__(
        self,
        backend: _Backend,
        *,
        mask_token: str,
        eos_token: str,
        pad_token: str | None = None,
        bos_token: str | None = None,
        chat_template: str | None = None,
        role_tokens: dict[str, str] | None = None,
        source: str = "<in memory>",
    ) -> None:
        self.backend = backend
        self._raw = _Backend.from_str(backend.to_str())  # same vocab, special strings not parsed
        self._raw.encode_special_tokens = True
        self.source = source
        self.mask_token = mask_token
        self.eos_token = eos_token
        self.pad_token = pad_token if pad_token is not None else eos_token  # LLaDA2: pad == eos
        self.bos_token = bos_token
        self.chat_template = chat_template
        self._compiled_template = None
        self.role_tokens = dict(role_tokens) if role_tokens is not None else dict(ROLE_TOKENS)
        self.mask_id = self._require_id(mask_token, "mask_token")
        self.eos_id = self._require_id(eos_token, "eos_token")
        self.pad_id = self._require_id(self.pad_token, "pad_token")
        if self.mask_id in (self.eos_id, self.pad_id):
            raise TokenizerError(f"{source}: mask token {mask_token!r} must differ from eos/pad tokens")

    def _require_id(self, token: str, what: str) -> int:
        idx = self.backend.token_to_id(token)
        if idx is None:
            raise TokenizerError(f"{self.source}: {what} {token!r} is not in the vocabulary")
        return idx

    # ------------------------------------------------------------------ basic
    @property
    def vocab_size(self) -> int:
        """Number of ids including added tokens (the embedding needs at least this many rows)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> set[int]:
        """Ids of the tokenizer's special added tokens (mask, eos, pad, roles, ...)."""
        return {int(i) for i, tok in self.backend.get_added_tokens_decoder().items() if tok.special}

    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        backend = self.backend if parse_special else self._raw
        return backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], *, parse_special: bool = True) -> list[list[int]]:
        backend = self.backend if parse_special else self._raw
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        return self.backend.id_to_token(int(idx))

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, mask_id={self.mask_id}, "
                f"eos_id={self.eos_id}, pad_id={self.pad_id})")

    # ------------------------------------------------------------------ chat
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render a conversation to text (special tokens as strings; `encode` turns them into ids).

        Uses the checkpoint's Jinja template when it has one, otherwise our role markers:
        `<|role|>content<|eos|>` per message, then `<|assistant|>` when a reply is wanted.
        """
        _check_messages(messages)
        if self.chat_template is not None:
            return self._render_jinja(messages, add_generation_prompt)
        return self._builtin_chat_template(messages, add_generation_prompt)

    def _builtin_chat_template(self, messages: list[dict], add_generation_prompt: bool) -> str:
        missing = [t for t in self.role_tokens.values() if self.backend.token_to_id(t) is None]
        if missing:
            raise TokenizerError(
                f"{self.source}: no chat template (tokenizer_config.json 'chat_template') and role tokens "
                f"{missing} are not in the vocabulary; cannot format chats"
            )
        parts = []
        for m in messages:
            if m["role"] not in self.role_tokens:
                raise ValueError(f"unknown chat role {m['role']!r}; expected one of {sorted(self.role_tokens)}")
            parts.append(self.role_tokens[m["role"]] + m["content"] + self.eos_token)
        if add_generation_prompt:
            parts.append(self.role_tokens["assistant"])
        return "".join(parts)

    def _render_jinja(self, messages: list[dict], add_generation_prompt: bool) -> str:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ValueError(f"chat template: {message}")

        try:
            if self._compiled_template is None:  # compiled once: SFT formatting renders it per message
                env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
                env.globals["raise_exception"] = raise_exception
                self._compiled_template = env.from_string(self.chat_template)
            return self._compiled_template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                eos_token=self.eos_token,
                bos_token=self.bos_token or "",
                pad_token=self.pad_token,
                mask_token=self.mask_token,
            )
        except TemplateError as exc:
            raise ValueError(f"{self.source}: cannot render chat template: {exc}") from exc

    def encode_chat(self, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """Token ids of a whole conversation and, per id, whether it belongs to an assistant reply.

        Assistant spans are found by rendering growing prefixes of the conversation, so any chat
        template works: the reply of message i is what `messages[:i+1]` adds after
        `messages[:i]` + generation prompt (its role marker is therefore *not* part of the reply;
        its end-of-turn token is). Raises if the template is not prefix-stable.
        """
        _check_messages(messages)
        ids: list[int] = []
        is_reply: list[bool] = []
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                head = self.encode(self.apply_chat_template(messages[:i], add_generation_prompt=True))
                self._extend_prefix(ids, is_reply, head, False, i)
            full = self.encode(self.apply_chat_template(messages[: i + 1], add_generation_prompt=False))
            self._extend_prefix(ids, is_reply, full, m["role"] == "assistant", i)
        return ids, is_reply

    def _extend_prefix(self, ids: list[int], flags: list[bool], longer: list[int], flag: bool, i: int) -> None:
        if longer[: len(ids)] != ids:
            raise ValueError(
                f"{self.source}: chat template is not prefix-stable at message {i}; "
                "cannot locate assistant tokens for the loss mask"
            )
        flags.extend([flag] * (len(longer) - len(ids)))
        ids.extend(longer[len(ids):])

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write tokenizer.json + tokenizer_config.json into directory `path` (atomically per file)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "mask_token": self.mask_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "bos_token": self.bos_token,
            "role_tokens": self.role_tokens,
            "chat_template": self.chat_template if self.chat_template is not None else BUILTIN_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
        }
        atomic_write(out / TOKENIZER_FILE, self.backend.to_str())
        atomic_write(out / TOKENIZER_CONFIG_FILE, json.dumps(config, indent=2))
        return out


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be a dict with str 'role' and 'content', got {m!r}")


def _find_token(backend: _Backend, configured: Any, candidates: Sequence[str]) -> str | None:
    token = _token_content(configured)
    if token is not None:
        return token
    return next((c for c in candidates if backend.token_to_id(c) is not None), None)


def load_tokenizer(
    path: str | os.PathLike,
    *,
    mask_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
) -> Tokenizer:
    """Load a directory holding tokenizer.json (+ tokenizer_config.json), or a tokenizer.json file.

    Special tokens come from the arguments, else tokenizer_config.json, else well-known names in the
    vocabulary. No mask token found → TokenizerError (a diffusion LM cannot decode without one).
    """
    p = Path(path)
    file = p / TOKENIZER_FILE if p.is_dir() else p
    if not file.is_file():
        raise TokenizerError(f"no {TOKENIZER_FILE} found at {p}")
    try:
        backend = _Backend.from_file(str(file))
    except Exception as exc:
        raise TokenizerError(f"{file}: not a valid tokenizers file: {exc}") from exc
    config: dict[str, Any] = {}
    config_file = file.parent / TOKENIZER_CONFIG_FILE
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TokenizerError(f"{config_file}: cannot read: {exc}") from exc
    chat_template = config.get("chat_template")
    if isinstance(chat_template, list):  # HF allows a list of named templates
        named = {t.get("name"): t.get("template") for t in chat_template if isinstance(t, dict)}
        chat_template = named.get("default") or next(iter(named.values()), None)
    jinja_file = file.parent / CHAT_TEMPLATE_FILE
    if chat_template is None and jinja_file.is_file():
        chat_template = jinja_file.read_text(encoding="utf-8")

    mask = mask_token or _find_token(backend, config.get("mask_token"), _MASK_CANDIDATES)
    if mask is None:
        raise TokenizerError(
            f"{p}: tokenizer has no mask token (looked for mask_token in {TOKENIZER_CONFIG_FILE} and for "
            f"{list(_MASK_CANDIDATES)} in the vocabulary); a diffusion LM needs one: pass mask_token=... "
            "or add a special mask token to the tokenizer"
        )
    eos = eos_token or _find_token(backend, config.get("eos_token"), _EOS_CANDIDATES)
    if eos is None:
        raise TokenizerError(f"{p}: tokenizer has no EOS token; pass eos_token=...")
    pad = pad_token or _token_content(config.get("pad_token"))
    role_tokens = config.get("role_tokens")
    return Tokenizer(
        backend,
        mask_token=mask,
        eos_token=eos,
        pad_token=pad,
        bos_token=_token_content(config.get("bos_token")),
        chat_template=chat_template if isinstance(chat_template, str) else None,
        role_tokens=role_tokens if isinstance(role_tokens, dict) else None,
        source=str(p),
    )

"""draftedit checkpoints as an lm-evaluation-harness model: `lm_eval --model draftedit`.

lm-eval 0.4 finds a model class only once the module defining it is imported (its registry has no
plugin discovery), so `draftedit lm-eval ARGS` (components/evaluate/lm_eval_cli.py) imports this
module and then hands ARGS to lm-eval's own command line; in Python, importing this module (or
passing a `DraftEditLM` instance to `lm_eval.simple_evaluate`) is enough.

* generate_until: our batched draft-and-edit decoder (`model.generate`) under a decoding preset
  (`preset=speedy`) with any DecodeConfig field as a model arg; a request's `max_gen_toks` becomes
  `gen_length`, its `until` strings cut the text, `do_sample`/`temperature`/`top_p`/`top_k` map to
  the DecodeConfig fields of the same meaning.
* loglikelihood(_rolling): an estimate of log p(continuation | context) from
  `components.evaluate.likelihood` (model arg `likelihood`: crn, antithetic, mc, left_to_right or
  decode_order; `mc_samples` levels for the sampled ones), every block of a batch in one forward per
  mask pattern. The sampled estimators draw their noise from the context (and the seed), so every
  choice of one question sees the same levels and masks, whatever the batching. `is_greedy` is
  whether our decoder, greedy, writes exactly the continuation after the context. The forwards the
  estimates took are counted in `likelihood_forwards`.

A request that fails (a prompt that does not fit, a decoding error) is logged and kept in
`failures`; it answers "" (generation) or -inf (likelihood), and the other requests go on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections import defaultdict
from typing import Any, Callable, Optional

import lm_eval.models  # noqa: F401  lm-eval registers its own models only into an empty registry
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

# `lm_eval.models` above holds lm-eval's own models (hf, local-completions, ...): imported after ours was
# registered, the registry would no longer be empty and they would be missing from every later lookup.

log = logging.getLogger(__name__)

# Model args besides the DecodeConfig fields (which are passed to the decoding preset).
OWN_ARGS = ("pretrained", "preset", "tracking_uri", "device", "dtype", "batch_size", "max_batch_size",
            "likelihood", "mc_samples", "t_min", "seed", "greedy_check", "max_length", "reply_lstrip")


def resolve_checkpoint(pretrained: str, tracking_uri: Optional[str] = None):
    """The local checkpoint folder of a path, `runs:/<id>/<path>` or `models:/<name>/<version|alias>`.

    A registered model is our pyfunc, which holds the checkpoint under `artifacts/checkpoint`.
    """
    from pathlib import Path

    from components.tracking.artifacts import resolve_uri
    from components.tracking.store import TrackingError, resolve_tracking_uri

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    uri = resolve_tracking_uri(uri, os.environ.get("DRAFTEDIT_OUTPUT_DIR", "outputs"))
    folder = Path(resolve_uri(str(pretrained), uri, what="draftedit model_args pretrained"))
    for candidate in (folder, folder / "artifacts" / "checkpoint"):
        if (candidate / "config.json").is_file():
            return candidate
    raise TrackingError(f"draftedit model_args pretrained={pretrained}: {folder} is not a checkpoint folder "
                        "(no config.json, nor artifacts/checkpoint/config.json)")


def _flag(value: Any, name: str) -> bool:
    """A boolean model arg (lm-eval passes them as strings from the command line)."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, bool):
        return value
    raise ModelArgsError(f"draftedit model_args {name} must be true or false, got {value!r}")


def _reply_marker(tokenizer) -> Optional[str]:
    """The text the chat template appends to ask for a reply (e.g. `<|assistant|>`), None without one."""
    try:
        turn = [{"role": "user", "content": "x"}]
        ask, plain = (tokenizer.apply_chat_template(turn, add_generation_prompt=g) for g in (True, False))
    except Exception:  # no template and no role tokens: plain text models, nothing to strip after
        return None
    return ask[len(plain):].strip() or None if ask.startswith(plain) else None


class ModelArgsError(ValueError):
    """A `draftedit` model arg is unknown or out of range (the message names it)."""


def _batch_size(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelArgsError(f"draftedit: batch_size must be a positive integer, got {value!r} "
                         "('auto' is not supported: decoding memory depends on gen_length, not only the batch)")
    return value


@register_model("draftedit")
class DraftEditLM(TemplateLM):
    """A draftedit checkpoint behind lm-eval's LM interface (see the module docstring)."""

    backend = "causal"

    def __init__(self, pretrained: Optional[str] = None, preset: str = "quality", tracking_uri: Optional[str] = None,
                 device: Optional[str] = None, dtype: str = "float32", batch_size: int | str = 16,
                 max_batch_size: Optional[int] = None, likelihood: str = "crn", mc_samples: int = 8,
                 t_min: float = 1e-3,
                 seed: Optional[int] = None, greedy_check: bool = True, max_length: Optional[int] = None,
                 reply_lstrip: bool = True,
                 lm=None, tokenizer=None, **decode_fields: Any) -> None:
        super().__init__()
        from components.presets import load_decode_config
        from components.evaluate.likelihood import LikelihoodConfig
        from model import DecodeConfig

        known = {f.name for f in dataclasses.fields(DecodeConfig)}
        unknown = sorted(set(decode_fields) - known)
        if unknown:
            raise ModelArgsError(f"draftedit model_args: unknown argument(s) {unknown}; expected {', '.join(OWN_ARGS)} "
                             f"or a DecodeConfig field ({', '.join(sorted(known))})")
        # Every cheap check before the checkpoint loads.
        self.decode = load_decode_config(preset, **decode_fields)
        self.preset = preset
        self.batch_size = _batch_size(batch_size)  # max_batch_size only bounds batch_size=auto, which is refused
        self.seed = int(seed) if seed is not None else torch.initial_seed() % 2**31  # lm-eval's --seed sets it
        try:
            self.likelihood = LikelihoodConfig(estimator=str(likelihood), samples=int(mc_samples), t_min=float(t_min),
                                               threshold=self.decode.threshold, seed=self.seed)
        except ValueError as exc:
            raise ModelArgsError(f"draftedit model_args likelihood/mc_samples/t_min: {exc}") from exc
        self.likelihood_forwards = 0  # forwards spent on likelihood estimates (their cost)
        self.greedy_check = _flag(greedy_check, "greedy_check")
        if lm is None:
            if not pretrained:
                raise ModelArgsError("draftedit model_args: pretrained=<checkpoint folder | runs:/... | models:/...> "
                                 "is required")
            lm, tokenizer = self._load(pretrained, tracking_uri, device, dtype)
        self.lm, self.tokenizer = lm.eval(), tokenizer
        if self.decode.mask_id is None:
            self.decode.mask_id = tokenizer.mask_id
        if self.decode.eos_id is None:
            self.decode.eos_id = tokenizer.eos_id
        limit = lm.config.max_position_embeddings
        self._max_length = int(max_length) if max_length is not None else limit
        if not 1 < self._max_length <= limit:
            raise ModelArgsError(f"draftedit model_args max_length must be in [2, {limit}] "
                             f"(max_position_embeddings), got {max_length}")
        self.reply_marker = _reply_marker(tokenizer) if _flag(reply_lstrip, "reply_lstrip") else None
        self.drop = {t for t in (self.decode.eos_id, self.decode.mask_id, tokenizer.pad_id) if t is not None}
        self.failures: list[dict[str, Any]] = []
        self._warned: set[str] = set()

    @staticmethod
    def _load(pretrained: str, tracking_uri: Optional[str], device: Optional[str], dtype: str):
        from components.quantize import load_checkpoint

        if dtype not in ("float32", "bfloat16"):
            raise ModelArgsError(f"draftedit model_args dtype must be float32 or bfloat16, got {dtype!r}")
        folder = resolve_checkpoint(pretrained, tracking_uri)
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            if device is not None:  # lm-eval's own default is "cuda"; its hf model falls back the same way
                log.warning("draftedit: device %s requested but CUDA is not available; using the CPU", device)
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return load_checkpoint(folder, device=device, dtype=getattr(torch, dtype))

    # ------------------------------------------------------------------ lm-eval plumbing
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self.decode.gen_length

    @property
    def device(self):
        return self.lm.device

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.source).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> Optional[str]:
        return self.tokenizer.chat_template or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split of context and continuation, except after the chat template's reply marker:
        there the model writes its answer at once, so the task's target delimiter (' ') is dropped
        rather than scored as a token the model never writes there (model arg reply_lstrip)."""
        if self.reply_marker and context.rstrip().endswith(self.reply_marker):
            return self.tok_encode(context.rstrip()), self.tok_encode(continuation.lstrip())
        return super()._encode_pair(context, continuation)

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([t for t in ids if t not in self.drop])

    def _fail(self, kind: str, request: int, context: str, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        self.failures.append({"request_type": kind, "request": request, "context_end": context[-80:], "error": error})
        log.warning("draftedit %s request %d failed: %s", kind, request, error)

    def _run_batches(self, kind: str, items: list, run: Callable[[list], list], fallback, disable_tqdm: bool,
                     describe: Callable[[Any], tuple[int, str]]) -> list:
        """`run` on consecutive batches of `items`; a failing batch is retried one item at a time, so
        only the item that fails gets `fallback` (and a record: describe(item) = (request index, context))."""
        out: list = []
        for first in tqdm(range(0, len(items), self.batch_size), desc=f"draftedit {kind}", disable=disable_tqdm):
            batch = items[first:first + self.batch_size]
            try:
                out.extend(run(batch))
                continue
            except Exception as exc:
                if len(batch) == 1:
                    self._fail(kind, *describe(batch[0]), exc)
                    out.append(fallback)
                    continue
            for item in batch:
                try:
                    out.extend(run([item]))
                except Exception as exc:
                    self._fail(kind, *describe(item), exc)
                    out.append(fallback)
        return out

    # ------------------------------------------------------------------ likelihoods
    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Drop the oldest context tokens so that context + continuation fits max_length."""
        if not continuation:
            raise ValueError("the continuation is empty (nothing to score)")
        if len(continuation) >= self.max_length:
            raise ValueError(f"the continuation has {len(continuation)} tokens; max_length is {self.max_length}")
        keep = self.max_length - len(continuation)
        return context[-keep:], continuation

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        from components.evaluate.likelihood import continuation_scores
        from components.rl.estimator import SequenceLayout

        pairs = [self._fit(c, x) for c, x in pairs]
        contexts, continuations = [c for c, _ in pairs], [x for _, x in pairs]
        layout = SequenceLayout.from_lists(contexts, continuations, self.decode.block_length,
                                           pad_id=self.tokenizer.pad_id, device=self.device)
        with torch.inference_mode():
            total, forwards = continuation_scores(self.lm, layout, self.likelihood, self.decode.mask_id, contexts,
                                                  continuations)
        self.likelihood_forwards += int(forwards.max())
        return [float(v) for v in total]

    def _greedy(self, pairs: list[tuple[list[int], list[int]]]) -> list[bool]:
        """Whether the greedy decoder writes each continuation exactly (one decode per continuation length)."""
        from model import generate

        pairs = [self._fit(c, x) for c, x in pairs]
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, (_, cont) in enumerate(pairs):
            by_length[len(cont)].append(i)
        greedy = [False] * len(pairs)
        for length, rows in by_length.items():
            prompts = [self._decodable_prompt(pairs[i][0], length) for i in rows]
            cfg = dataclasses.replace(self.decode, gen_length=length, temperature=0.0, record_trajectory=False)
            with torch.inference_mode():
                res = generate(self.lm, prompts, cfg)
            for i, prompt, canvas in zip(rows, prompts, res.canvases):
                greedy[i] = canvas[len(prompt):len(prompt) + length] == pairs[i][1]
        return greedy

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        index = {id(pair): n for n, pair in enumerate(pairs)}

        def run(batch):
            scores = self._score(batch)
            greedy = self._greedy(batch) if self.greedy_check else [False] * len(batch)
            return list(zip(scores, greedy))

        results = self._run_batches("loglikelihood", pairs, run, (float("-inf"), False), disable_tqdm,
                                    lambda pair: (index[id(pair)], self.tok_decode(pair[0])))
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Σ over disjoint windows of at most max_length tokens, each conditioned on what precedes it
        (lm-eval's rolling windows; the first window on the EOS token)."""
        windows, owner = [], []
        for n, (text,) in enumerate(req.args for req in requests):
            for window in get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id,
                                                    self.max_length - 1, context_len=1):
                windows.append((None, *make_disjoint_window(window)))
                owner.append(n)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for n, (score, _) in zip(owner, scores):
            totals[n] += score
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    # ------------------------------------------------------------------ generation
    def _decodable_prompt(self, prompt: list[int], gen_length: int) -> list[int]:
        """The prompt's last tokens that leave room for gen_length in whole blocks of the canvas."""
        block = self.decode.block_length
        room = (self.lm.config.max_position_embeddings // block) * block - gen_length
        if room < 1:
            raise ValueError(f"gen_length {gen_length} leaves no room for a prompt within "
                             f"max_position_embeddings={self.lm.config.max_position_embeddings}")
        return prompt[-room:]

    def _generation_config(self, gen_kwargs: dict[str, Any]):
        """The DecodeConfig of one request's generation kwargs, and its stop strings."""
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        fields: dict[str, Any] = {"gen_length": int(kwargs.pop("max_gen_toks", self.max_gen_toks))}
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = kwargs.pop("temperature", None)
        if not do_sample or temperature == 0:
            fields["temperature"] = 0.0
        elif temperature is not None:
            fields["temperature"] = float(temperature)
        elif self.decode.temperature == 0:
            fields["temperature"] = 1.0  # sampling asked for without a temperature: plain sampling
        for key in ("top_p", "top_k"):
            if kwargs.get(key) is not None:
                fields[key] = kwargs.pop(key)
            kwargs.pop(key, None)
        decode_fields = {f.name for f in dataclasses.fields(self.decode)}
        fields.update({k: kwargs.pop(k) for k in list(kwargs) if k in decode_fields})
        for key in sorted(kwargs):
            if key not in self._warned:
                self._warned.add(key)
                log.warning("draftedit: generation kwarg %r has no meaning for the draft-and-edit decoder; "
                            "ignored", key)
        return dataclasses.replace(self.decode, **fields, record_trajectory=False), until

    def _cut(self, ids: list[int], until: list[str]) -> str:
        text = self.tok_decode(ids)
        for stop in until:
            if stop:
                text = text.split(stop, 1)[0]
        return text

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from model import generate

        items = [(i, req.args[0], req.args[1]) for i, req in enumerate(requests)]
        groups: dict[str, list] = defaultdict(list)  # requests with the same generation kwargs decode together
        for item in items:
            groups[repr(sorted(item[2].items()))].append(item)
        out: dict[int, str] = {}
        batch_counter = iter(range(len(items)))
        for group in groups.values():
            cfg, until = self._generation_config(group[0][2])
            encoded = [(i, context, self.tok_encode(context)) for i, context, _ in group]
            encoded.sort(key=lambda e: -len(e[2]))  # similar lengths decode together

            def run(batch, cfg=cfg, until=until):
                prompts = [self._decodable_prompt(ids, cfg.gen_length) for _, _, ids in batch]
                seed = (cfg.seed if cfg.seed is not None else self.seed) + next(batch_counter)
                with torch.inference_mode():
                    res = generate(self.lm, prompts, dataclasses.replace(cfg, seed=seed))
                return [self._cut(seq, until) for seq in res.sequences]

            texts = self._run_batches("generate_until", encoded, run, "", disable_tqdm, lambda e: (e[0], e[1]))
            for (i, context, _), text in zip(encoded, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", (context, group[0][2]), text)
        return [out[i] for i in range(len(items))]


# ---------------------------------------------------------------------- the evaluation stage's harness tasks
def metric_name(task: str, key: str) -> Optional[str]:
    """`eval/<task>/<metric>` for lm-eval's "<metric>,<filter>" key (`/<filter>` appended unless the
    filter is "none"); None for what is not a metric (the alias, sample counts)."""
    metric, _, filt = key.partition(",")
    if not filt or metric == "alias":
        return None
    clean = lambda text: re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", text)  # noqa: E731  MLflow's allowed characters
    name = f"eval/{clean(task)}/{clean(metric)}"
    return name if filt == "none" else f"{name}/{clean(filt)}"


def harness_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The numeric metrics of lm-eval's `results["results"]` under stable MLflow names."""
    metrics: dict[str, float] = {}
    for task, values in results.items():
        for key, value in values.items():
            name = metric_name(task, key)
            if name is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[name] = float(value)
    return metrics


def prepare_harness(lm, tokenizer, cfg, suite_tasks=()):
    """(model, task manager) for an `LmEvalConfig`, with the model args and task names checked, so that
    a typo fails before the evaluation stage decodes anything. `suite_tasks`: names of the suite's own
    tasks, whose eval/<task>/ metrics an lm-eval task of the same name would overwrite."""
    from lm_eval.tasks import TaskManager

    from components.evaluate.config import TaskConfigError

    clash = sorted(set(cfg.tasks) & {os.path.splitext(os.path.basename(str(t)))[0] for t in suite_tasks})
    if clash:
        raise TaskConfigError(f"lm_eval.tasks: {clash} also name tasks of the suite; their eval/<task>/ metrics "
                              "would collide")
    try:
        model = DraftEditLM(lm=lm, tokenizer=tokenizer, batch_size=cfg.batch_size, seed=cfg.seed,
                            **dict(cfg.model_args))
    except ValueError as exc:
        raise TaskConfigError(f"lm_eval.model_args: {exc}") from exc
    manager = TaskManager(include_path=cfg.include_path, include_defaults=cfg.include_defaults)
    known = set(manager.all_tasks)
    unknown = [t for t in cfg.tasks if t not in known]
    if unknown:
        where = f"include_path {cfg.include_path}" if cfg.include_path else "no include_path"
        raise TaskConfigError(f"lm_eval.tasks: unknown lm-eval task(s) {unknown} (built-in tasks "
                              f"{'indexed' if cfg.include_defaults else 'not indexed'}, {where})")
    return model, manager


def run_harness(model: DraftEditLM, manager, cfg, output_dir=None) -> dict[str, float]:
    """Run the lm-eval tasks of `cfg`; returns eval/<task>/<metric> plus eval/lm_eval/failures.

    With `output_dir`, lm-eval's results (results.json), every sample's record (<task>.jsonl) and the
    failed requests (failures.json) are written there."""
    import json
    from pathlib import Path

    import lm_eval
    from lm_eval.utils import handle_non_serializable

    out = lm_eval.simple_evaluate(
        model=model, tasks=list(cfg.tasks), task_manager=manager, num_fewshot=cfg.num_fewshot, limit=cfg.limit,
        batch_size=cfg.batch_size, random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed, log_samples=output_dir is not None,
    )
    metrics = harness_metrics(out["results"])
    metrics["eval/lm_eval/failures"] = float(len(model.failures))
    if output_dir is not None:
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        summary = {k: out.get(k) for k in ("results", "groups", "configs", "versions", "n-shot", "n-samples")}
        (folder / "results.json").write_text(json.dumps(summary, indent=1, default=handle_non_serializable))
        for task, samples in (out.get("samples") or {}).items():
            with open(folder / f"{task}.jsonl", "w") as f:
                for sample in samples:
                    f.write(json.dumps(sample, default=handle_non_serializable) + "\n")
        (folder / "failures.json").write_text(json.dumps(model.failures, indent=1))
    return metrics

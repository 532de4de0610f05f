"""`draftedit gpu-check`: the released-model path on one GPU, as one prepared command.

What a CPU cannot run, at the release's full shape from a random-init checkpoint in its layout
(components.standin): each check is one row (name, device, shape, figures, PASS/FAIL, one error
line); a failing check does not stop the others, and any failure makes the command exit 1.

  checkpoint         the stand-in folder written (or reused, or given) and checked from its headers
  load               safetensors read straight onto the device (`safe_open(device="cuda")`)
  decode_b<N>        decoder TPS at batch N with exactly `tokens_per_forward` masks filled per forward
                     (threshold 1: random weights commit nothing by confidence, so the fallback count
                     decides), the KV cache and queued-work synchronisation around every timing
  decode_sampled     sampled decoding, its draws from a torch.Generator on the model's device: the
                     same seed must give the same draws, another seed others
  attention_kernels  the network's SDPA call (bool block mask, GQA) on each kernel that takes it
                     (flash, memory-efficient, cuDNN on CUDA) against the float32 math kernel
  fp8_matmul         the per-block FP8 product (1x128 activation and 128x128 weight scales) on the
                     device's scaled-matmul kernel against bf16, error and time
  sft_lora           LoRA SFT steps on the loaded checkpoint through the training module's objective
                     and optimiser, with the trainer's GPU choices (bf16 autocast, gradient
                     checkpointing): tokens/s, peak memory; adapters must move, base weights not
  sft_full           full SFT steps at the checkpoint's width with `train.full_layers` layers (all 16B
                     parameters with AdamW state do not fit one GPU)

Where model/ and components/ branch on the device (a grep for `torch.cuda`, `device.type`), and what
takes each: model/ has no branch of its own, but runs on CUDA through safetensors' device load
(load), the device-side KV cache and canvas (decode_b<N>), the device-side sampling generator
(decode_sampled) and SDPA's fused kernels (attention_kernels); components.bench.measure.sync_device and
components.bench.memory.PeakMemory (`torch.cuda` synchronisation and peak counters: every timed and
memory figure); components.training.run's `auto` choices for a GPU, bf16 autocast and gradient
checkpointing (sft_lora, sft_full, through `precision_for` / `gradient_checkpointing_for`); the
scaled-matmul kernels of components.quantize.fp8 (fp8_matmul). On a CPU the same checks run at a scaled
shape (conf/bench/gpu_check_cpu.yaml), the FP8 product on the CPU's row-wise scaled matmul.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from components.cli_errors import one_line
from components.config import to_container

from .config import GpuCheckConfig, PromptSetConfig
from .machine import describe_machine
from .measure import Measurement, Plan, sync_device
from .memory import PeakMemory, model_bytes
from .prompts import PromptSet, load_prompt_set

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class CheckSkipped(RuntimeError):
    """A check cannot run because one it depends on failed or the time budget is spent."""


@dataclass
class Context:
    """What the checks share: the config, the device, the checkpoint and its loaded model."""

    cfg: GpuCheckConfig
    device: torch.device
    checkpoint: Optional[Path]  # a given folder, or None to write (or reuse) one at `checkpoint_dir`
    checkpoint_dir: Path
    deadline: float
    model_dir: Optional[Path] = None
    lm: Any = None
    tokenizer: Any = None

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.cfg.dtype]

    def over_budget(self) -> bool:
        return time.perf_counter() > self.deadline

    def need_model(self):
        if self.lm is None:
            raise CheckSkipped("needs the loaded checkpoint (see the load row)")
        return self.lm

    def need_folder(self) -> Path:
        if self.model_dir is None:
            raise CheckSkipped("needs the checkpoint folder (see the checkpoint row)")
        return self.model_dir

    def free_model(self) -> None:
        self.lm = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------- helpers
def shape_label(config) -> str:
    """`20L h2048 256x8e v157184`: layers, width, routed experts x per token, vocabulary."""
    experts = f" {config.num_experts}x{config.num_experts_per_tok}e" if config.num_experts else ""
    return f"{config.num_hidden_layers}L h{config.hidden_size}{experts} v{config.vocab_size}"


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls after `warmup` untimed ones, queued GPU work waited for."""
    for _ in range(warmup):
        fn()
    walls = []
    for _ in range(repeats):
        sync_device(device)
        start = time.perf_counter()
        fn()
        sync_device(device)
        walls.append(time.perf_counter() - start)
    return walls


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 distance of a from the reference b."""
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _shape_options(name: str) -> dict[str, int]:
    from components.standin import load_shape

    return {} if name == "full" else load_shape(name)


def _shape_name(name: str) -> str:
    """`full`, a shape's name, or a shape YAML's file name without its suffix."""
    is_path = os.sep in name or name.endswith((".yaml", ".yml"))
    return Path(name).stem if is_path else name


def default_checkpoint_dir(out_file: Path, shape: str) -> Path:
    """Beside the JSON: one stand-in folder per shape, reused by the next run."""
    return out_file.parent / f"checkpoint-{_shape_name(shape)}"


def _random_prompts(ctx: Context, batch: int, length: int) -> list[list[int]]:
    """Random prompt token ids (never the mask) through the benchmark's own random prompt set."""
    lm = ctx.need_model()
    spec = PromptSetConfig(task=None, num_prompts=batch, random_min_length=length, random_max_length=length,
                           seed=ctx.cfg.seed)
    return load_prompt_set(spec, ctx.need_folder(), lm.config.vocab_size, ctx.tokenizer.mask_id).ids


def fixed_tokens_decode(ctx: Context, batch: int, **fields: Any):
    """The preset with its acceptance rule replaced: exactly `tokens_per_forward` masks per forward.

    No confidence is strictly above 1, so no mask is filled by threshold and no token edited; the
    fallback fills the `tokens_per_forward` most confident masks; no post steps, no early stop.
    """
    from components.presets import load_decode_config

    d = ctx.cfg.decode
    # A release's config.json names no special ids: the tokenizer's are the ones to decode with.
    return load_decode_config(d.preset, mask_id=ctx.tokenizer.mask_id, eos_id=ctx.tokenizer.eos_id,
                              threshold=1.0, editing_threshold=1.0, num_to_transfer=d.tokens_per_forward,
                              max_post_steps=0, eos_early_stop=False, speculative_verify=False, mbe_window=0,
                              max_reverts=None, block_length=d.block_length, gen_length=d.gen_length,
                              max_batch_size=batch, use_cache=True, **fields)


# ---------------------------------------------------------------------------------------- checks
def check_checkpoint(ctx: Context) -> dict:
    from model import DiffusionLM
    from model.checkpoint import check_pretrained

    start = time.perf_counter()
    if ctx.checkpoint is not None:
        folder, how = ctx.checkpoint, "given"
    else:
        folder = ctx.checkpoint_dir
        how = "reused" if _matches_shape(folder, ctx.cfg) else "written"
        if how == "written":
            from components.standin import load_standin, write_standin

            write_standin(load_standin(ctx.cfg.like), _shape_options(ctx.cfg.shape), folder, seed=ctx.cfg.seed)
    summary = check_pretrained(DiffusionLM, folder)
    ctx.model_dir = folder
    return {"path": str(folder), "how": how, "seconds": time.perf_counter() - start,
            "parameters": summary["elements"], "tensors": summary["tensors"], "dtype": summary["dtype"]}


def _matches_shape(folder: Path, cfg: GpuCheckConfig) -> bool:
    """An earlier run's stand-in of this release and shape is complete and can be reused."""
    from components.standin import load_standin, model_config
    from model.config import ModelConfig

    if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
        return False
    try:
        have = ModelConfig.from_pretrained(folder).to_dict()
    except Exception:  # a damaged folder is written again
        return False
    want = model_config(load_standin(cfg.like), _shape_options(cfg.shape)).to_dict()
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_experts", "num_experts_per_tok",
            "moe_intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size")
    return all(have.get(k) == want.get(k) for k in keys)


def check_load(ctx: Context) -> dict:
    from components.quantize import load_model
    from model.tokenizer import load_tokenizer

    folder = ctx.need_folder()
    with PeakMemory(ctx.device) as mem:
        sync_device(ctx.device)
        start = time.perf_counter()
        lm = load_model(folder, dtype=ctx.dtype, device=ctx.device).eval()
        sync_device(ctx.device)
        seconds = time.perf_counter() - start
    if lm.device.type != ctx.device.type:
        raise RuntimeError(f"the model loaded onto {lm.device}, not {ctx.device}")
    ctx.lm, ctx.tokenizer = lm, load_tokenizer(folder)
    size = model_bytes(lm)
    return {"seconds": seconds, "model_gb": size / 1e9, "gb_per_s": size / 1e9 / max(seconds, 1e-9),
            "dtype": str(lm.dtype).removeprefix("torch."), "peak_mem_mb": mem.peak_bytes / 2**20}


def check_decode(ctx: Context, batch: int) -> dict:
    lm = ctx.need_model()
    d = ctx.cfg.decode
    decode = fixed_tokens_decode(ctx, batch)
    ids = _random_prompts(ctx, batch, d.prompt_length)
    plan = Plan(f"decode_b{batch}", "setting", d.preset, batch, "none", decode, list(range(batch)))
    m = Measurement(plan, lm, PromptSet(ids=ids, texts=[None] * batch), ctx.device)
    m.warm(d.warmup)
    for _ in range(d.repeats):
        m.one_pass()
        if ctx.over_budget():
            break  # at least one timed pass; the row says how many ran
    record = m.record()
    tokens = batch * d.gen_length
    forwards = d.gen_length // d.tokens_per_forward
    if record["forwards"] != batch * forwards or record["network_calls"] != forwards:
        raise RuntimeError(f"expected {forwards} forwards per prompt ({d.tokens_per_forward} tokens each) and "
                           f"{forwards} network calls, got {record['forwards']} forwards and "
                           f"{record['network_calls']} calls")
    walls = record["wall_s_all"]
    return {"batch": batch, "prompt_length": d.prompt_length, "gen_length": d.gen_length,
            "tokens_per_forward": d.tokens_per_forward, "tokens": tokens, "forwards": forwards,
            "tps": tokens / record["wall_s"], "tps_min": tokens / max(walls), "tps_max": tokens / min(walls),
            "wall_s": record["wall_s"], "wall_s_all": walls, "repeats": len(walls), "warmup": d.warmup,
            "deterministic": record["deterministic"], "peak_mem_mb": record["peak_mem_mb"]}


def check_decode_sampled(ctx: Context) -> dict:
    """Sampled decoding (temperature > 0): the draws come from a generator on the model's device.

    The pass rule is the sampler's (choose_tokens on the device: one seed, one draw; another seed,
    others) and the decode's fixed forwards. Whether two whole decodes with one seed agree is a figure,
    not a rule: on CUDA the MoE's index_add_ sums in a varying order, so a near-tie may draw otherwise.
    """
    from model import generate
    from model.sampling import choose_tokens

    lm = ctx.need_model()
    d = ctx.cfg.decode
    batch = d.sampled_batch_size
    ids = _random_prompts(ctx, batch, d.prompt_length)
    runs, walls = [], []
    for _ in range(2):
        decode = fixed_tokens_decode(ctx, batch, temperature=d.temperature, seed=ctx.cfg.seed)
        sync_device(ctx.device)
        start = time.perf_counter()
        runs.append(generate(lm, ids, decode))
        sync_device(ctx.device)
        walls.append(time.perf_counter() - start)
    forwards = d.gen_length // d.tokens_per_forward
    if any(f != forwards for run in runs for f in run.forwards):
        raise RuntimeError(f"expected {forwards} forwards per prompt, got {runs[0].forwards}")
    if any(t == ctx.tokenizer.mask_id for run in runs for seq in run.canvases for t in seq):
        raise RuntimeError("a sampled decode left a mask token in its canvas")
    logits = torch.randn(batch, d.block_length, lm.config.vocab_size,
                         generator=torch.Generator().manual_seed(ctx.cfg.seed)).to(ctx.device)  # (B, L, V)

    def draw(seed: int) -> torch.Tensor:
        g = torch.Generator(device=ctx.device).manual_seed(seed)
        return choose_tokens(logits, ctx.tokenizer.mask_id, d.temperature, generator=g)[0]

    first = draw(ctx.cfg.seed)
    same, differs = bool(torch.equal(first, draw(ctx.cfg.seed))), not torch.equal(first, draw(ctx.cfg.seed + 1))
    if first.device.type != ctx.device.type:
        raise RuntimeError(f"the sampler drew on {first.device}, not {ctx.device}")
    if not same:
        raise RuntimeError("two draws from one seed on the device differ")
    if not differs:
        raise RuntimeError("draws from different seeds on the device are the same: the seed is not used")
    tokens = batch * d.gen_length
    return {"batch": batch, "temperature": d.temperature, "tokens": tokens, "forwards": forwards,
            "tps": tokens / statistics.median(walls), "wall_s_all": walls, "same_seed_identical": same,
            "other_seed_differs": differs, "decode_reproducible": runs[0].canvases == runs[1].canvases}


def check_decode_graphs(ctx: Context) -> dict:
    """The fixed-token decode with its steady steps replayed as CUDA graphs (DecodeConfig.cuda_graphs)
    against the eager decode, on the same prompts: tokens must agree, the speed-up is a figure. The
    first graph decode captures (and compiles) and is not timed. Off CUDA, static shapes alone run."""
    from model import generate

    lm = ctx.need_model()
    d = ctx.cfg.decode
    batch = d.graphs_batch_size
    ids = _random_prompts(ctx, batch, d.prompt_length)
    switch = {"cuda_graphs": True} if ctx.device.type == "cuda" else {"static_shapes": True}
    arms = {"eager": fixed_tokens_decode(ctx, batch), "graphs": fixed_tokens_decode(ctx, batch, **switch)}
    results, walls = {}, {name: [] for name in arms}
    for name, decode in arms.items():
        results[name] = generate(lm, ids, decode)  # warm-up (capture and compilation for the graphs)
    for _ in range(d.repeats):
        for name, decode in arms.items():
            sync_device(ctx.device)
            start = time.perf_counter()
            generate(lm, ids, decode)
            sync_device(ctx.device)
            walls[name].append(time.perf_counter() - start)
    if results["graphs"].sequences != results["eager"].sequences:
        raise RuntimeError(f"the {next(iter(switch))} decode differs from the eager one on the same prompts")
    tokens = batch * d.gen_length
    tps = {name: tokens / statistics.median(w) for name, w in walls.items()}
    return {"batch": batch, "switch": next(iter(switch)), "tokens": tokens, "tps_eager": tps["eager"],
            "tps_graphs": tps["graphs"], "speedup": tps["graphs"] / tps["eager"], "same_tokens": True,
            "wall_s_all": walls}


def check_attention_kernels(ctx: Context) -> dict:
    """The decoder's attention call (model.network.Attention: bool block mask over prompt + generation,
    GQA) on every SDPA kernel that takes it, against the math kernel in float32 on the same inputs."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from model.masks import block_causal_mask

    config = ctx.need_model().config
    d, a = ctx.cfg.decode, ctx.cfg.attention
    length = d.prompt_length + d.gen_length
    heads, kv_heads, dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    g = torch.Generator().manual_seed(ctx.cfg.seed)
    q, k, v = (torch.randn(a.batch_size, h, length, dim, generator=g).to(ctx.device, ctx.dtype)  # (B, H|KVH, T, D)
               for h in (heads, kv_heads, kv_heads))
    mask = block_causal_mask(length, d.block_length, device=ctx.device)  # (1, 1, T, T)

    def attend(*tensors):
        return F.scaled_dot_product_attention(*tensors, attn_mask=mask, enable_gqa=heads != kv_heads)

    with sdpa_kernel([SDPBackend.MATH]):
        reference = attend(q.float(), k.float(), v.float())
    errors = {"default": _rel(attend(q, k, v), reference)}
    unavailable = {}
    for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.CUDNN_ATTENTION):
        name = backend.name.lower()
        try:
            with sdpa_kernel([backend]):
                out = attend(q, k, v)
        except RuntimeError as exc:  # this kernel does not take the call (mask, GQA, dtype, device)
            unavailable[name] = one_line(exc)[:120]
            continue
        errors[name] = _rel(out, reference)
    fused = [n for n in errors if n not in ("default", "math")]
    worst = max(errors.values())
    if worst > a.max_rel_error:
        raise RuntimeError(f"an attention kernel is {worst:.4f} from the float32 math kernel "
                           f"(> attention.max_rel_error={a.max_rel_error}): {errors}")
    return {"batch": a.batch_size, "length": length, "heads": heads, "kv_heads": kv_heads, "head_dim": dim,
            "fused_ran": fused, "unavailable": unavailable, "rel_error": errors, "max_rel_error": worst}


def check_fp8_matmul(ctx: Context) -> dict:
    from components.quantize.fp8 import FP8_KERNELS, fp8_matmul, fp8_matmul_reference, quantize_activations
    from model.config import ModelConfig
    from model.fp8 import quantize_blockwise

    config = ModelConfig.from_pretrained(ctx.need_folder())
    f = ctx.cfg.fp8
    block = (int(f.block_size[0]), int(f.block_size[1]))
    m, k, n = f.tokens, config.hidden_size, config.intermediate_size or config.moe_intermediate_size
    g = torch.Generator().manual_seed(ctx.cfg.seed)
    x = torch.randn(m, k, generator=g).to(ctx.device, torch.bfloat16)  # (M, K) activations
    w = (torch.randn(n, k, generator=g) * config.initializer_range).to(ctx.device, torch.bfloat16)  # (N, K)
    wq, w_scale = quantize_blockwise(w, block)
    xq, x_scale = quantize_activations(x, block[1])
    bf16 = x @ w.t()  # (M, N)
    exact = fp8_matmul_reference(xq, x_scale, wq, w_scale, block)
    outputs, skipped = {}, {}
    for name in FP8_KERNELS:  # every kernel this torch and device run, each against the exact product
        try:
            outputs[name] = fp8_matmul(xq, x_scale, wq, w_scale, block, name)
        # A torch without the API (Attribute/ImportError) or a device without the kernel: the next one.
        except (RuntimeError, ValueError, NotImplementedError, AttributeError, ImportError, TypeError) as exc:
            skipped[name] = one_line(exc)[:120]
    if not outputs:
        raise RuntimeError(f"no FP8 kernel ran on {ctx.device.type}: {skipped}")
    kernel_errors = {name: _rel(out, exact) for name, out in outputs.items()}
    kernel = next(iter(outputs))  # the first that ran: the one a server would take
    rel_bf16, rel_exact = _rel(outputs[kernel], bf16), kernel_errors[kernel]
    walls_fp8 = timed(lambda: fp8_matmul(xq, x_scale, wq, w_scale, block, kernel), ctx.device, f.warmup, f.repeats)
    walls_quant = timed(lambda: fp8_matmul(*quantize_activations(x, block[1]), wq, w_scale, block, kernel),
                        ctx.device, f.warmup, f.repeats)
    walls_bf16 = timed(lambda: x @ w.t(), ctx.device, f.warmup, f.repeats)
    fp8_s, quant_s, bf16_s = (statistics.median(v) for v in (walls_fp8, walls_quant, walls_bf16))
    flops = 2 * m * k * n
    figures = {"m": m, "k": k, "n": n, "kernel": kernel, "kernels_skipped": skipped, "rel_error_vs_bf16": rel_bf16,
               "rel_error_vs_exact": rel_exact, "kernel_rel_error": kernel_errors, "fp8_ms": fp8_s * 1e3,
               "fp8_with_quant_ms": quant_s * 1e3, "bf16_ms": bf16_s * 1e3, "speedup": bf16_s / fp8_s,
               "fp8_tflops": flops / fp8_s / 1e12, "bf16_tflops": flops / bf16_s / 1e12}
    wrong = {name: round(e, 4) for name, e in kernel_errors.items() if not e <= f.max_kernel_error}
    if wrong:
        raise RuntimeError(f"FP8 kernel(s) {wrong} away from the exact FP8 product "
                           f"(> fp8.max_kernel_error={f.max_kernel_error}); all: {kernel_errors}")
    if not rel_bf16 <= f.max_rel_error:
        raise RuntimeError(f"FP8 product is {rel_bf16:.4f} from bf16 (> fp8.max_rel_error={f.max_rel_error})")
    return figures


def _train_config(ctx: Context):
    from components.cli_errors import config_errors
    from components.config import REPO_ROOT
    from components.training import load_train_config

    t = ctx.cfg.train
    path = Path(t.config)
    path = path if path.is_absolute() or path.exists() else REPO_ROOT / path
    with config_errors(path, list(t.overrides)):
        return load_train_config(path, list(t.overrides))


def _sft_batch(ctx: Context, vocab_size: int, special: set[int]) -> dict[str, torch.Tensor]:
    """Random SFT rows as the collator gives them: prompt tokens first, every other token in the loss."""
    t = ctx.cfg.train
    g = torch.Generator().manual_seed(ctx.cfg.seed)
    allowed = torch.tensor([i for i in range(vocab_size) if i not in special])
    ids = allowed[torch.randint(0, len(allowed), (t.batch_size, t.seq_len), generator=g)]  # (B, L)
    prompt = torch.zeros(t.batch_size, t.seq_len, dtype=torch.bool)
    prompt[:, :t.prompt_length] = True
    batch = {"input_ids": ids, "prompt_mask": prompt, "loss_mask": ~prompt}
    return {k: v.to(ctx.device) for k, v in batch.items()}


def _sft_steps(ctx: Context, lm, train_cfg, lora: bool) -> dict:
    """`warmup + steps` optimizer steps of the training module's objective and optimiser on one
    batch; figures of the timed ones."""
    from components.training.module import DiffusionTrainingModule, step_generator
    from components.training.run import gradient_checkpointing_for, precision_for

    on_gpu = ctx.device.type == "cuda"
    precision = precision_for(train_cfg, on_gpu)
    lm.gradient_checkpointing = gradient_checkpointing_for(train_cfg, on_gpu)
    lm.train()
    tok = ctx.tokenizer
    special = set(tok.special_ids) | {tok.mask_id, tok.eos_id, tok.pad_id}
    module = DiffusionTrainingModule(lm, train_cfg, mask_id=tok.mask_id, vocab_size=lm.config.vocab_size,
                                     special_ids=special)
    optimizers = module.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    params = [p for p in lm.parameters() if p.requires_grad]
    batch = _sft_batch(ctx, min(lm.config.vocab_size, tok.vocab_size), special)
    t = ctx.cfg.train
    autocast_dtype = _AUTOCAST.get(precision)
    autocast = partial(torch.autocast, ctx.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext
    watched = {n: p.detach().float().sum().item() for n, p in lm.named_parameters()}
    walls, losses = [], []
    with PeakMemory(ctx.device) as mem:
        for step in range(t.warmup_steps + t.steps):
            sync_device(ctx.device)
            start = time.perf_counter()
            g = step_generator(train_cfg.trainer.seed, step, 0, 0, 1, ctx.device)
            with autocast():
                out = module.objective(lm, batch, module.block_length(step, t.seq_len), g, step=step)
            out.loss.backward()
            if train_cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, train_cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            module.moe.update()
            sync_device(ctx.device)
            losses.append(float(out.loss.detach()))
            if step >= t.warmup_steps:
                walls.append(time.perf_counter() - start)
                if ctx.over_budget():
                    break
    lm.eval()
    moved = {n for n, p in lm.named_parameters() if p.detach().float().sum().item() != watched[n]}
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"a training loss is not finite: {losses}")
    if not moved & trainable:
        raise RuntimeError("no trainable parameter changed after the optimizer steps")
    if moved - trainable:
        raise RuntimeError(f"frozen parameters changed: {sorted(moved - trainable)[:3]}")
    if lora and not all("lora_" in n for n in trainable):
        raise RuntimeError(f"LoRA trains non-adapter parameters: {sorted(n for n in trainable if 'lora_' not in n)[:3]}")
    tokens = t.batch_size * t.seq_len
    step_s = statistics.median(walls)
    return {"batch": t.batch_size, "seq_len": t.seq_len, "tokens_per_step": tokens, "steps": len(walls),
            "warmup_steps": t.warmup_steps, "tokens_per_s": tokens / step_s, "step_s": step_s, "step_s_all": walls,
            "peak_mem_mb": mem.peak_bytes / 2**20, "parameters": sum(p.numel() for p in lm.parameters()),
            "trainable_parameters": sum(p.numel() for p in params), "precision": precision,
            "gradient_checkpointing": lm.gradient_checkpointing, "loss_first": losses[0], "loss_last": losses[-1]}


def check_sft_lora(ctx: Context) -> dict:
    from components.training.run import apply_lora

    lm = ctx.need_model()
    train_cfg = _train_config(ctx)
    ctx.lm = None  # the adapters change the network: no later check may take it for the checkpoint's
    try:
        return _sft_steps(ctx, apply_lora(lm, train_cfg), train_cfg, lora=True)
    finally:
        del lm
        ctx.free_model()


def check_sft_full(ctx: Context) -> dict:
    from model import DiffusionLM
    from model.checkpoint import random_model
    from model.config import ModelConfig

    if ctx.tokenizer is None:
        raise CheckSkipped("needs the checkpoint's tokenizer (see the load row)")
    ctx.free_model()
    config = ModelConfig.from_pretrained(ctx.need_folder())
    layers = ctx.cfg.train.full_layers
    if layers is not None and layers < config.num_hidden_layers:
        config = replace(config, num_hidden_layers=layers)
    lm = random_model(DiffusionLM, config, dtype=ctx.dtype, seed=ctx.cfg.seed).to(ctx.device)
    train_cfg = _train_config(ctx)
    figures = _sft_steps(ctx, lm, train_cfg, lora=False)
    figures["shape"] = shape_label(config)
    return figures


# ---------------------------------------------------------------------------------------- running
@dataclass
class Check:
    name: str
    run: Callable[[Context], dict]
    summary: tuple[str, ...]  # the figures the printed table shows


def checks(cfg: GpuCheckConfig) -> list[Check]:
    """Every check in the order it runs (decode and attention before LoRA changes the network)."""
    decode = [Check(f"decode_b{b}", partial(check_decode, batch=b), ("tps", "tps_min", "tps_max", "peak_mem_mb"))
              for b in cfg.decode.batch_sizes]
    train = ("tokens_per_s", "peak_mem_mb", "trainable_parameters", "loss_last")
    return [
        Check("checkpoint", check_checkpoint, ("how", "parameters", "seconds")),
        Check("load", check_load, ("seconds", "gb_per_s", "peak_mem_mb")),
        *decode,
        Check("decode_sampled", check_decode_sampled, ("tps", "same_seed_identical", "decode_reproducible")),
        Check("decode_graphs", check_decode_graphs, ("switch", "tps_eager", "tps_graphs", "speedup")),
        Check("attention_kernels", check_attention_kernels, ("fused_ran", "max_rel_error")),
        Check("fp8_matmul", check_fp8_matmul, ("kernel", "rel_error_vs_bf16", "fp8_ms", "bf16_ms", "speedup")),
        Check("sft_lora", check_sft_lora, train),
        Check("sft_full", check_sft_full, ("shape", *train)),
    ]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value)


def run_checks(ctx: Context, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Every check, each in its own row; a failure is recorded and the next check runs."""
    rows = []
    shape = "?"
    for check in checks(ctx.cfg):
        row = {"name": check.name, "device": ctx.device.type, "shape": shape, "status": "PASS", "error": None,
               "figures": {}}
        start = time.perf_counter()
        try:
            if ctx.over_budget():
                raise CheckSkipped(f"not run: the time budget of {ctx.cfg.budget_s:g} s (budget_s) was spent")
            row["figures"] = check.run(ctx)
        except Exception as exc:  # every failure is a row, never the end of the run
            row.update(status="FAIL", error=one_line(exc))
            if ctx.device.type == "cuda" and "out of memory" in str(exc).lower():
                ctx.free_model()
        row["seconds"] = time.perf_counter() - start
        if check.name == "checkpoint" and ctx.model_dir is not None:
            from model.config import ModelConfig

            shape = row["shape"] = shape_label(ModelConfig.from_pretrained(ctx.model_dir))
        row["shape"] = row["figures"].pop("shape", row["shape"])
        row["summary"] = " ".join(f"{k}={_fmt(row['figures'][k])}" for k in check.summary if k in row["figures"])
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def resolve_device(name: str) -> torch.device:
    """`cuda` needs a CUDA device; the caller turns the error into its one line."""
    from components.cli_errors import UsageError

    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; run it on a GPU worker, or pass "
                         "--device cpu for the scaled CPU run")
    return torch.device(name)


def run_gpu_check(cfg: GpuCheckConfig, out_file: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                  on_row: Callable[[dict], None] | None = None) -> dict:
    """Run every check and write the JSON report to `out_file`; returns the report."""
    from model.files import atomic_write

    device = resolve_device(cfg.device)
    out_file = Path(out_file)
    given = Path(checkpoint) if checkpoint is not None else None
    started = time.perf_counter()
    ctx = Context(cfg, device, given, default_checkpoint_dir(out_file, cfg.shape), started + cfg.budget_s)
    rows = run_checks(ctx, on_row)
    report = {"passed": all(r["status"] == "PASS" for r in rows), "device": device.type,
              "wall_s": time.perf_counter() - started, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "checkpoint": str(ctx.model_dir) if ctx.model_dir else None, "machine": describe_machine(device),
              "config": to_container(cfg), "rows": rows}
    ctx.free_model()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_file, json.dumps(report, indent=2, default=str) + "\n")
    return report


def table(rows: list[dict]) -> str:
    """The printed table: one line per check, then each failure's error line."""
    from .report import markdown_table

    text = markdown_table(rows, ["name", "status", "device", "shape", "seconds", "summary"])
    errors = [f"{r['name']}: {r['error']}" for r in rows if r["status"] != "PASS"]
    return text + ("\n" + "\n".join(errors) + "\n" if errors else "")


# ---------------------------------------------------------------------------------------- command
def add_arguments(parser) -> None:
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="cuda (default; fails with one line where there is none) or cpu (the scaled run)")
    parser.add_argument("--shape", default=None,
                        help="full (the release's shape), a name in conf/standin/shapes/ (cpu) or a shape YAML "
                             "(default: the config's: full, or cpu with --device cpu)")
    parser.add_argument("--checkpoint", default=None,
                        help="use this checkpoint folder instead of writing (or reusing) a random-init stand-in")
    parser.add_argument("--out", default=None,
                        help="JSON report (default: <outputs>/gpu_check/gpu_check_<device>.json); a written "
                             "stand-in goes beside it, checkpoint-<shape>/, and is reused by the next run")
    parser.add_argument("--config", default=None,
                        help="a gpu-check YAML or a name in conf/bench/ (default: gpu_check, or gpu_check_cpu "
                             "with --device cpu)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable: --set decode.repeats=5 --set 'decode.batch_sizes=[1,8]'")


def load_gpu_check_config(args) -> GpuCheckConfig:
    from components.cli_errors import config_errors
    from components.config import CONF_DIR, load_config

    name = args.config or ("gpu_check_cpu" if args.device == "cpu" else "gpu_check")
    candidate = CONF_DIR / "bench" / f"{name}.yaml"
    path = candidate if candidate.is_file() else Path(name)
    if not path.is_file():
        from components.config import ConfigError

        raise ConfigError(f"gpu-check config not found: {name} (a YAML path or a name in {CONF_DIR / 'bench'})")
    overrides = list(args.overrides)
    overrides += [f"device={args.device}"] if args.device else []
    overrides += [f"shape={args.shape}"] if args.shape else []
    with config_errors(path, overrides):
        return load_config(GpuCheckConfig, path, overrides)


def run(args) -> int:
    from components.config import default_output_dir

    cfg = load_gpu_check_config(args)
    resolve_device(cfg.device)  # one line before anything is written
    out = Path(args.out) if args.out else default_output_dir() / "gpu_check" / f"gpu_check_{cfg.device}.json"

    def progress(row: dict) -> None:
        print(f"gpu-check: {row['name']} {row['status']} ({row['seconds']:.1f} s)"
              + (f": {row['error']}" if row["error"] else ""), flush=True)

    report = run_gpu_check(cfg, out, checkpoint=args.checkpoint, on_row=progress)
    print(table(report["rows"]), end="")
    failed = [r["name"] for r in report["rows"] if r["status"] != "PASS"]
    print(f"report: {out}")
    print(f"gpu-check: {'all ' + str(len(report['rows'])) + ' checks passed' if not failed else 'FAILED: ' + ', '.join(failed)}"
          f" in {report['wall_s']:.0f} s on {report['device']}")
    return 1 if failed else 0

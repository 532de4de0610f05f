"""Memory: will a setting fit (checked before it runs), and how much did it use (measured while it ran)."""

from __future__ import annotations

import os
import threading

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def model_bytes(lm) -> int:
    """Bytes held by parameters and buffers (quantized tensor subclasses report their packed size)."""
    total = 0
    for t in list(lm.parameters()) + list(lm.buffers()):
        try:
            total += t.numel() * t.element_size()
        except (RuntimeError, NotImplementedError):  # exotic subclasses: count as one byte per element
            total += t.numel()
    return total


def estimate_decode_bytes(lm, batch: int, canvas_len: int, block_length: int, cached: bool) -> int:
    """A generous upper estimate of what decoding adds on top of the weights.

    KV cache (every layer, the whole canvas), the activations of one forward (the block, or with no
    cache the whole canvas), attention scores, and the float32 logits with their softmax copies.
    """
    cfg = lm.config
    elem = torch.finfo(lm.dtype).bits // 8 if lm.dtype.is_floating_point else 4
    q_len = 2 * block_length if cached else canvas_len
    kv = 2 * cfg.num_hidden_layers * batch * cfg.num_key_value_heads * canvas_len * cfg.head_dim * elem if cached else 0
    width = max(cfg.intermediate_size or 0, (cfg.moe_intermediate_size or 0) * (cfg.num_experts_per_tok + 1))
    activations = batch * q_len * (6 * cfg.hidden_size + 3 * width) * elem
    scores = batch * cfg.num_attention_heads * q_len * canvas_len * 4
    logits_positions = block_length if cached else q_len
    logits = 3 * batch * logits_positions * cfg.vocab_size * 4
    return int(kv + activations + scores + logits)


def available_bytes(device: torch.device) -> int:
    """Free memory now: CUDA free memory, or the kernel's MemAvailable on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: do not refuse


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class PeakMemory:
    """Peak memory while the `with` block runs: CUDA's allocator peak, or sampled process RSS on CPU."""

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device, self.interval_s = device, interval_s
        self.peak_bytes = 0
        self.start_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self.start_bytes = self.peak_bytes = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())

"""The LLaDA2 network: a non-causal transformer whose mask is always given by the caller.

Module and parameter names follow the released checkpoints exactly, so `state_dict()` keys are
the Hugging Face keys (`model.layers.N.attention.query_key_value.weight`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cache import CacheWrite, KVCache, LayerCache
from .config import ModelConfig


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T or K, V) float32
    # Per layer (key, value) of the input tokens after RoPE, each (B, KVH, T, D); only when asked.
    key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None


@dataclass
class ForwardPlan:
    """Everything a forward needs besides the token ids: positions, rotary tables, the prepared mask,
    the packing of padded rows, where the cache writes and where logits are read.

    All of it depends on the layout of a forward, not on its tokens. A decoder makes one plan per
    layout (`DiffusionLM.plan`) and passes it to every forward with that layout (all the steps of a
    block), so this work and its host reads happen once per block, and every forward of a plan has
    the same tensors and shapes (what graph capture and compilation need).
    """

    batch: int
    seq_len: int
    position_ids: torch.Tensor  # (B, T)
    mask: torch.Tensor | None  # prepared: bool or in the weights' dtype, [B|1, 1, T, Tk]
    cos: torch.Tensor
    sin: torch.Tensor
    packing: "TokenPacking | None"
    logits_index: torch.Tensor | None  # (B, K) into the packed tokens, or (B, K, hidden) for a gather
    cache_write: CacheWrite | None


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, as the reference does (it matters for bf16 parity)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_cos_sin(position_ids: torch.Tensor, rotary_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin tables (B, 1, T, rotary_dim) for the given absolute positions (float32 math), shaped to
    broadcast over the heads."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, device=position_ids.device,
                                             dtype=torch.int64).float() / rotary_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # (B, T, rotary_dim/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, rotary_dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_partial_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `rotary_dim` dims of each head (halves paired, not interleaved)."""
    rotary_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    return torch.cat([x_rot * cos + rotated * sin, x_pass], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.query_key_value = nn.Linear(
            config.hidden_size, (self.num_heads + 2 * self.num_kv_heads) * self.head_dim, bias=config.use_qkv_bias)
        if config.use_qk_norm:
            self.query_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.query_layernorm = self.key_layernorm = None
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.use_bias)

    def forward(self, x, cos, sin, mask, past: "LayerCache | None", packing: "TokenPacking | None" = None):
        qkv = self.query_key_value(x)
        if packing is not None:
            qkv = packing.unpack(qkv)
        bsz, q_len, _ = qkv.shape
        qkv = qkv.view(bsz, q_len, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|KVH, T, D)
        if self.query_layernorm is not None:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k = apply_partial_rotary(q, cos, sin), apply_partial_rotary(k, cos, sin)
        new_kv = (k, v)
        if past is not None:
            k, v = past.update(k, v)  # (B, KVH, width, D): keys at absolute positions 0 .. width-1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.num_heads != self.num_kv_heads)
        out = out.transpose(1, 2).reshape(bsz, q_len, self.num_heads * self.head_dim)
        if packing is not None:
            out = packing.pack(out)
        return self.dense(out), new_kv


class MLP(nn.Module):
    """SwiGLU feed-forward block."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """Sigmoid router with group-limited top-k; `expert_bias` steers selection only."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, hidden) -> expert indices (N, k), mixing weights (N, k) in float32."""
        scores = torch.sigmoid(F.linear(x.float(), self.weight.float()))  # (N, E)
        biased = scores + self.expert_bias.float()
        n = scores.shape[0]
        group_scores = biased.view(n, self.n_group, -1).topk(2, dim=-1).values.sum(-1)  # (N, G)
        top_groups = group_scores.topk(self.topk_group, dim=-1, sorted=False).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, top_groups, True)
        expert_mask = group_mask[:, :, None].expand(n, self.n_group, self.num_experts // self.n_group).reshape(n, -1)
        indices = biased.masked_fill(~expert_mask, float("-inf")).topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, indices)
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return indices, weights * self.routed_scaling_factor


class SparseMoE(nn.Module):
    """Routed experts plus always-on shared experts."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.experts = nn.ModuleList(
            MLP(config.hidden_size, config.moe_intermediate_size) for _ in range(config.num_experts))
        self.gate = Router(config)
        self.shared_experts = (MLP(config.hidden_size, config.moe_intermediate_size * config.num_shared_experts)
                               if config.num_shared_experts else None)
        # Tokens routed to each expert by the last forward; read by training to balance the load.
        self.last_expert_load: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, hidden)
        indices, weights = self.gate(flat)  # (N, k)
        out = torch.zeros_like(flat)
        load = torch.bincount(indices.flatten(), minlength=len(self.experts))
        self.last_expert_load = load.detach()
        for e in load.nonzero().flatten().tolist():
            token_idx, slot = (indices == e).nonzero(as_tuple=True)
            expert_out = self.experts[e](flat[token_idx])
            weighted = expert_out * weights[token_idx, slot, None].to(expert_out.dtype)
            out.index_add_(0, token_idx, weighted.to(out.dtype))  # under autocast the experts compute in bf16
        if self.training and torch.is_grad_enabled():
            # Experts no token chose still run, on zero tokens: their gradient is then zero instead of
            # missing, so every data-parallel rank reduces the same parameters (FSDP's reduce-scatter
            # and DDP's all-reduce need that) and one process trains as several do.
            for e in (load == 0).nonzero().flatten().tolist():
                out = out + self.experts[e](flat[:0]).sum()
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(shape)


class TokenPacking:
    """Which (row, position) slots of a padded (B, T) batch hold real tokens.

    When rows of a batch need different query lengths, the padded slots would cost as much as real
    ones in every projection and MLP. With a packing, those token-wise parts run on the N real tokens
    only, as an (N, hidden) matrix; only attention, which needs the (B, T) layout, scatters them back.
    """

    def __init__(self, valid: torch.Tensor):
        self.shape = tuple(valid.shape)
        self.flat_index = valid.reshape(-1).nonzero().squeeze(1)  # (N,) into B*T
        self.slot_of = torch.full((valid.numel(),), -1, dtype=torch.long, device=valid.device)
        self.slot_of[self.flat_index] = torch.arange(len(self.flat_index), device=valid.device)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...)"""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.flat_index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, T, ...), zeros in the padded slots."""
        out = x.new_zeros((self.shape[0] * self.shape[1], *x.shape[1:]))
        out.index_copy_(0, self.flat_index, x)
        return out.view(*self.shape, *x.shape[1:])

    def packed_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """(B, K) positions within each row -> (B, K) indices into the packed tokens (all must be real)."""
        rows = torch.arange(self.shape[0], device=positions.device)[:, None]
        slots = self.slot_of[rows * self.shape[1] + positions]
        if bool((slots < 0).any()):
            raise ValueError("logits_positions point at padded (token_valid=False) slots")
        return slots


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.attention = Attention(config)
        self.mlp = SparseMoE(config) if config.layer_is_moe(layer_idx) else MLP(config.hidden_size,
                                                                                  config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, past, packing=None):
        attn_out, new_kv = self.attention(self.input_layernorm(x), cos, sin, mask, past, packing)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_kv


class Backbone(nn.Module):
    """Holds the `model.*` part of the checkpoint (embeddings, layers, final norm)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DiffusionLM(nn.Module):
    """Block-diffusion language model in the LLaDA2 layout (MoE or dense)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.word_embeddings.weight
        self.gradient_checkpointing = False
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, Router):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.expert_bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past: KVCache | None = None,
                return_key_values: bool = False, logits_positions: torch.Tensor | None = None,
                token_valid: torch.Tensor | None = None, plan: ForwardPlan | None = None) -> ModelOutput:
        """Run the network.

        attention_mask: None (full bidirectional), bool [B|1, 1, T, Tk] (True = attend) or an additive
        float mask of that shape (0 / -inf); Tk = T, or with `past` the cache width. past: a KVCache
        whose slot j is absolute position j; the input tokens' keys/values are written at their
        slots (position_ids) and every query attends over slots [0, width), width = 1 + the largest
        real input position (or the longest kept row), so the key axis of the mask is absolute
        positions and it must hide slots a query may not see (see model/cache.py). logits_positions
        [B, K]: only compute logits there (saves the vocabulary projection on positions the caller
        does not read). token_valid [B, T] bool: which input slots are real tokens when rows are padded
        to a common length; the projections and MLPs then skip the padding (see TokenPacking). Padded
        slots' keys/values are zeros and their logits cannot be asked for.
        plan: the layout of this forward made beforehand by `plan` (then the arguments it was made
        from are not given again; `past` is, as the cache the plan writes to).
        """
        if plan is None:
            plan = self.plan(input_ids.shape[0], input_ids.shape[1], attention_mask, position_ids, past,
                             logits_positions, token_valid)
        elif input_ids.shape != (plan.batch, plan.seq_len):
            raise ValueError(f"input_ids of shape {tuple(input_ids.shape)} do not fit a plan for "
                             f"{(plan.batch, plan.seq_len)}")
        if past is not None:
            if plan.cache_write is None:
                raise ValueError("the forward plan was made without a cache")
            past.begin(plan.cache_write)
        packing = plan.packing
        x = self.model.word_embeddings(input_ids if packing is None else packing.pack(input_ids))
        cos, sin = plan.cos, plan.sin
        if cos.dtype != x.dtype:
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        key_values = []
        for i, layer in enumerate(self.model.layers):
            layer_past = past.layer(i) if past is not None else None
            if self.gradient_checkpointing and self.training:
                x, kv = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, plan.mask, layer_past, packing,
                                                          use_reentrant=False)
            else:
                x, kv = layer(x, cos, sin, plan.mask, layer_past, packing)
            if return_key_values:
                key_values.append(kv)
        if packing is not None:
            x = packing.unpack(x) if plan.logits_index is None else x[plan.logits_index]  # (B, T|K, hidden)
        elif plan.logits_index is not None:
            x = x.gather(1, plan.logits_index)  # (B, K, hidden)
        logits = self.lm_head(self.model.norm(x)).float()
        return ModelOutput(logits=logits, key_values=key_values if return_key_values else None)

    def plan(self, batch: int, seq_len: int, attention_mask: torch.Tensor | None = None,
             position_ids: torch.Tensor | None = None, past: KVCache | None = None,
             logits_positions: torch.Tensor | None = None, token_valid: torch.Tensor | None = None,
             key_width: int | None = None, indexed_cache_write: bool = False) -> ForwardPlan:
        """The layout of a forward over (batch, seq_len) input ids; the arguments mean what they mean for
        `forward`. key_width (with `past`): attend over that many cache slots instead of just the ones in
        use, so that forwards at every position of a decode share their shapes; indexed_cache_write: see
        `KVCache.plan_write`."""
        device = self.device
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=device).expand(batch, seq_len)
        cache_write = (past.plan_write(position_ids, token_valid, key_width, indexed_cache_write)
                       if past is not None else None)
        key_len = cache_write.width if cache_write is not None else seq_len
        mask = self._prepare_mask(attention_mask, batch, seq_len, key_len)
        packing = TokenPacking(token_valid) if token_valid is not None and not bool(token_valid.all()) else None
        cos, sin = rotary_cos_sin(position_ids, self.config.rotary_dim, self.config.rope_theta,
                                  self.model.word_embeddings.weight.dtype)
        logits_index = None
        if logits_positions is not None:
            logits_index = (packing.packed_positions(logits_positions) if packing is not None
                            else logits_positions[:, :, None].expand(-1, -1, self.config.hidden_size))
        return ForwardPlan(batch, seq_len, position_ids, mask, cos, sin, packing, logits_index, cache_write)

    def _prepare_mask(self, attention_mask, bsz, seq_len, expected_keys):
        if attention_mask is None:
            return None
        if (attention_mask.dim() != 4 or attention_mask.shape[1] != 1 or attention_mask.shape[2] != seq_len
                or attention_mask.shape[3] != expected_keys or attention_mask.shape[0] not in (1, bsz)):
            raise ValueError(
                f"attention_mask must have shape [{bsz} or 1, 1, {seq_len}, {expected_keys}], "
                f"got {tuple(attention_mask.shape)}")
        if attention_mask.dtype == torch.bool:
            return attention_mask
        return attention_mask.to(self.dtype)

    # Checkpoint I/O lives in checkpoint.py; these are the public entry points.
    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
        from .checkpoint import load_pretrained
        return load_pretrained(cls, path, dtype=dtype, device=device)

    def save_pretrained(self, path, max_shard_bytes: int | None = None) -> None:
        from .checkpoint import save_pretrained
        save_pretrained(self, path, max_shard_bytes=max_shard_bytes)

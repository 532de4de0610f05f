"""The mixed M2T + T2T objective on the block-diffusion input, with MTF, complementary masking and CAP.

`DraftEditObjective(cfg, ...)(lm, batch, generator)` corrupts a batch, runs the network on
x_t ⊕ x_0 under the training mask of design §4 (or on x_t alone when one block spans the row:
plain MDLM with a document mask, half the cost), and returns the loss and its parts:

  loss = L_m2t + w_t2t · L_t2t + w_keep · L_keep + w_cap · L_cap   (+ the same for an MTF turn)

* L_m2t: cross-entropy of the clean token at masked positions; `weighting="none"` is the mean over
  masked tokens, `"inv_t"` the ELBO weight: Σ CE/t over masked tokens divided by the number of
  noisable tokens (so both have the scale of a per-token cross-entropy).
* L_t2t: cross-entropy of the clean token at visible-but-wrong positions (random tokens, or the
  model's own wrong drafts in an MTF turn).
* L_keep: cross-entropy at noisable positions shown with their clean token (teaches "leave
  correct tokens alone"). Without it the T2T stream only ever sees wrong visible tokens, and the
  model learns that every visible token is wrong.
* L_t2t and L_keep are sums over one shared count, all visible noisable tokens, by default
  (`visible_normalizer: pooled`): together one cross-entropy over the visible tokens, where a wrong
  token weighs what a correct one does, so the probability of another token at a visible position
  is calibrated. Separate means (`per_stream`) weigh each wrong token ~(1-r)/r times a correct one
  at T2T rate r, and the model edits correct tokens away (most often an answer's last tokens
  turned into EOS).
* Levenshtein blocks (`levenshtein_prob`, LLaDA2.2 §3.1): a share of the blocks carries deletions,
  duplications and run shifts, and every stream there predicts the block's LCS label (a token,
  DELETE or INSERT; `model.levenshtein.edit_labels`) instead of x_0. It needs a model with the two
  edit-control rows (`model.levenshtein.add_edit_controls`). `levenshtein_label_weight` w multiplies
  the cross-entropy of every position labelled DELETE or INSERT, in whichever stream it falls (a
  surplus mask is an M2T target, a token to delete or an insertion site a T2T one). Every
  denominator stays a count of positions (no re-normalisation by the weights), so each stream's loss
  becomes (Σ_other CE + w · Σ_control CE) / n: w = 1 is exactly the plain loss, and the control
  terms are scaled by w and nothing else. The two rows start at zero and are rare targets (a few
  per Levenshtein block); the weight is how hard the loss pulls them up.
* L_cap: LLaDA2.0's confidence loss, the mean entropy of the prediction at masked positions the
  model already predicts correctly.

Editing-stream rows can be read in the Multi-Block Editing view (`mbe_prob`, `mbe_window`): the
drafted window of blocks attends itself bidirectionally, as the decoder's MBE pass reads it. Without
such rows that pass is out of the training distribution and its edits break correct tokens.

Prompt and padding positions are never noised and never in any loss (`corruption.noisable_positions`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from model.masks import block_diffusion_mask

from .config import ObjectiveConfig
from .corruption import (
    Corruption,
    complementary,
    levenshtein_corrupt,
    m2t_corrupt,
    mbe_windows,
    mtf_corrupt,
    noisable_positions,
    t2t_corrupt,
    unmask_rows,
)


def training_attention(seq_len: int, block_length: int, doc_ids: torch.Tensor | None, device=None,
                       windows: torch.Tensor | None = None) -> torch.Tensor | None:
    """The attention mask of one training forward (None = full attention).

    block_length >= seq_len: one block, the x_0 half is not needed (MDLM): a same-document mask
    [B, 1, L, L] or None (a window changes nothing there). Otherwise the x_t ⊕ x_0 block-diffusion
    mask [B|1, 1, 2L, 2L], with rows in the Multi-Block Editing view where `windows` says so.
    """
    if block_length >= seq_len:
        if doc_ids is None:
            return None
        return (doc_ids[:, :, None] == doc_ids[:, None, :])[:, None]  # (B, 1, L, L)
    return block_diffusion_mask(seq_len, block_length, doc_ids=doc_ids, device=device, windows=windows)


def diffusion_logits(lm, xt: torch.Tensor, x0: torch.Tensor, block_length: int,
                     doc_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                     windows: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, L, V] of the noisy half for one training forward."""
    bsz, seq_len = xt.shape
    if position_ids is None:
        position_ids = torch.arange(seq_len, device=xt.device).expand(bsz, seq_len)  # (B, L)
    mask = training_attention(seq_len, block_length, doc_ids, device=xt.device, windows=windows)
    if block_length >= seq_len:
        return lm(xt, attention_mask=mask, position_ids=position_ids).logits  # (B, L, V)
    inputs = torch.cat([xt, x0], dim=1)  # (B, 2L)
    positions = torch.cat([position_ids, position_ids], dim=1)  # (B, 2L)
    noisy_half = torch.arange(seq_len, device=xt.device).expand(bsz, seq_len)  # (B, L)
    return lm(inputs, attention_mask=mask, position_ids=positions, logits_positions=noisy_half).logits


def _masked_ce(logits: torch.Tensor, targets: torch.Tensor, where: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position cross-entropy [N] at the True positions of `where` [B, L], times `weight` [B, L]
    there when given."""
    ce = F.cross_entropy(logits[where], targets[where], reduction="none")
    return ce if weight is None else ce * weight[where]


def control_label_weights(targets: torch.Tensor, control_ids: tuple[int, int] | None,
                          weight: float) -> torch.Tensor | None:
    """float [B, L]: `weight` where the label is an edit control (DELETE/INSERT), 1 elsewhere; None when
    nothing would change (weight 1 or no control rows), so the plain loss is computed as before."""
    if control_ids is None or weight == 1.0:
        return None
    is_control = (targets == control_ids[0]) | (targets == control_ids[1])
    return torch.where(is_control, weight, 1.0).to(torch.float32)


def stream_losses(logits: torch.Tensor, c: Corruption, weighting: str,
                  visible_normalizer: str = "pooled", control_ids: tuple[int, int] | None = None,
                  control_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Every loss part and accuracy of one forward; empty streams give a zero loss (still in the graph).

    `visible_normalizer="pooled"` divides the T2T and keep sums by the same count (all visible noisable
    tokens), so together they are one calibrated cross-entropy; "per_stream" makes each its own mean.
    `control_weight` multiplies the cross-entropy of positions labelled with one of `control_ids`
    (DELETE, INSERT) in every stream; the denominators stay counts of positions.
    """
    zero = logits.sum() * 0.0
    out: dict[str, torch.Tensor] = {}
    targets = c.targets  # x0, or the LCS labels in Levenshtein blocks
    w = control_label_weights(targets, control_ids, control_weight)
    n_m2t = int(c.m2t.sum())
    if n_m2t:
        ce = _masked_ce(logits, targets, c.m2t, w)  # (N_m2t,)
        if weighting == "inv_t":
            out["m2t"] = (ce / c.t[c.m2t]).sum() / c.noisable.sum().clamp_min(1)
        elif weighting == "none":
            out["m2t"] = ce.mean()  # = Σ w·CE / N_m2t: the count, not Σ w, divides
        else:
            raise ValueError(f"weighting must be 'none' or 'inv_t', got {weighting!r}")
        pred = logits[c.m2t].argmax(-1)  # (N_m2t,)
        correct = pred == targets[c.m2t]
        out["acc_masked"] = correct.float().mean().detach()
        if correct.any():
            logp = torch.log_softmax(logits[c.m2t][correct], dim=-1)  # (N_correct, V)
            out["cap"] = -(logp.exp() * logp).sum(-1).mean()
        else:
            out["cap"] = zero
    else:
        out["m2t"] = out["cap"] = zero
    keep = c.keep
    if visible_normalizer == "pooled":
        n_t2t = n_keep = (c.t2t | keep).sum().clamp_min(1)
    elif visible_normalizer == "per_stream":
        n_t2t, n_keep = c.t2t.sum().clamp_min(1), keep.sum().clamp_min(1)
    else:
        raise ValueError(f"visible_normalizer must be 'pooled' or 'per_stream', got {visible_normalizer!r}")
    if c.t2t.any():
        out["t2t"] = _masked_ce(logits, targets, c.t2t, w).sum() / n_t2t
        out["acc_t2t"] = (logits[c.t2t].argmax(-1) == targets[c.t2t]).float().mean().detach()
    else:
        out["t2t"] = zero
    out["keep"] = _masked_ce(logits, targets, keep, w).sum() / n_keep if keep.any() else zero
    if control_ids is not None:  # how rare the control targets are among the labelled positions
        labelled = c.m2t | c.t2t | keep
        is_control = (targets == control_ids[0]) | (targets == control_ids[1])
        out["n_labelled"] = labelled.sum().float()
        out["n_control"] = (is_control & labelled).sum().float()
    out["n_m2t"] = torch.tensor(float(n_m2t))
    out["n_t2t"] = torch.tensor(float(c.t2t.sum()))
    return out


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    metrics: dict[str, float]  # detached scalars for logging (train/<name>)
    corruption: Corruption  # of the first turn (tests read it)
    mtf: Corruption | None = None  # of the MTF turn, when one ran
    mtf_draft: torch.Tensor | None = None  # [B, L] model drafts used by the MTF turn (-1 = not filled)


class DraftEditObjective:
    """Corruption + forward(s) + loss. Stateless; the caller passes the step's generator."""

    def __init__(self, cfg: ObjectiveConfig, *, mask_id: int, vocab_size: int, special_ids: set[int],
                 edit_ids: tuple[int, int] | None = None):
        """`edit_ids`: the model's (DELETE, INSERT) ids, needed when `cfg.levenshtein_prob` > 0; they are
        never drawn as T2T noise."""
        if cfg.levenshtein_prob > 0.0 and edit_ids is None:
            raise ValueError(f"train.objective.levenshtein_prob={cfg.levenshtein_prob} needs a model with DELETE/INSERT "
                             "rows (edit_ids unset; add them with model.levenshtein.add_edit_controls)")
        self.cfg = cfg
        self.mask_id = mask_id
        self.vocab_size = vocab_size
        self.edit_ids = edit_ids
        self.special_ids = set(special_ids) | {mask_id} | set(edit_ids or ())

    def t2t_rate_scale(self, step: int) -> float:
        """Linear ramp of the T2T rate over `t2t_warmup_steps` (avoids slowing early learning)."""
        if self.cfg.t2t_warmup_steps <= 0:
            return 1.0
        return min(1.0, step / self.cfg.t2t_warmup_steps)

    def corrupt(self, batch: dict[str, torch.Tensor], block_length: int, generator: torch.Generator,
                step: int = 0) -> Corruption:
        """The first turn's corruption: M2T (+ complement), T2T on what is left visible, then the
        Levenshtein blocks."""
        cfg = self.cfg
        x0 = batch["input_ids"]
        noisable = noisable_positions(batch["loss_mask"], batch.get("prompt_mask"))
        c = m2t_corrupt(x0, noisable, mask_id=self.mask_id, t_min=cfg.t_min, t_max=cfg.t_max, generator=generator,
                        noise_per=cfg.noise_per, block_length=block_length)
        if cfg.complementary:
            c = complementary(c, self.mask_id)
        if cfg.t2t_stream_prob > 0.0:
            rows = torch.rand(c.x0.shape[0], 1, generator=generator, device=c.x0.device) < cfg.t2t_stream_prob
            c = unmask_rows(c, rows)
            if cfg.mbe_prob > 0.0:
                mbe = rows & (torch.rand(c.x0.shape[0], 1, generator=generator, device=c.x0.device) < cfg.mbe_prob)
                c = replace(c, windows=mbe_windows(c.noisable, mbe, block_length, cfg.mbe_window, generator))
        scale = self.t2t_rate_scale(step)
        c = t2t_corrupt(c, rate_min=cfg.t2t_rate_min * scale, rate_max=cfg.t2t_rate_max * scale,
                        source=cfg.t2t_source, vocab_size=self.vocab_size, exclude_ids=self.special_ids,
                        generator=generator, shift_prob=cfg.t2t_shift_prob)
        if cfg.levenshtein_prob > 0.0:  # no draw otherwise: the noise stream of a run without it is unchanged
            c = levenshtein_corrupt(c, prob=cfg.levenshtein_prob, max_ops=cfg.levenshtein_max_ops,
                                    block_length=block_length, mask_id=self.mask_id, delete_id=self.edit_ids[0],
                                    insert_id=self.edit_ids[1], exclude_ids=self.special_ids, generator=generator)
        return c

    def _turn_loss(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.cfg
        return parts["m2t"] + cfg.t2t_weight * parts["t2t"] + cfg.keep_weight * parts["keep"] + cfg.cap_weight * parts["cap"]

    def __call__(self, lm, batch: dict[str, torch.Tensor], block_length: int, generator: torch.Generator,
                 step: int = 0, mtf: bool | None = None,
                 agree: Callable[[bool, bool], bool] | None = None) -> ObjectiveOutput:
        """One training (or validation) step's loss. `mtf=None` draws the MTF turn with prob `mtf_prob`.
        `agree(drawn, possible)` makes the processes of a data-parallel run take the same decision."""
        cfg = self.cfg
        c = self.corrupt(batch, block_length, generator, step)
        doc_ids = batch.get("doc_ids")
        if doc_ids is not None and cfg.complementary:
            doc_ids = torch.cat([doc_ids, doc_ids], dim=0)
        logits = diffusion_logits(lm, c.xt, c.x0, block_length, doc_ids, windows=c.windows)  # (B, L, V)
        parts = stream_losses(logits, c, cfg.weighting, cfg.visible_normalizer, self.edit_ids,
                              cfg.levenshtein_label_weight)
        loss = self._turn_loss(parts)
        metrics = {f"loss_{k}": float(parts[k].detach()) for k in ("m2t", "t2t", "keep", "cap")}
        metrics.update({k: float(parts[k]) for k in ("acc_masked", "acc_t2t", "n_m2t", "n_t2t", "n_labelled", "n_control")
                        if k in parts})
        if c.levenshtein is not None:
            metrics["n_levenshtein"] = float(c.levenshtein.sum())
        if mtf is None:  # the draw is made from the first step on, so the noise stream does not depend on the start
            mtf = cfg.mtf_prob > 0 and float(torch.rand(1, generator=generator)) < cfg.mtf_prob
            mtf = mtf and step >= cfg.mtf_start_step
        out = ObjectiveOutput(loss=loss, metrics=metrics, corruption=c)
        if agree is not None:
            mtf = agree(mtf, bool(c.m2t.any()))
        elif mtf:
            mtf = bool(c.m2t.any())  # a host read, made only when the turn was drawn
        if mtf:
            c2, draft = mtf_corrupt(c, logits.detach(), mask_id=self.mask_id, fill_min=cfg.mtf_fill_min,
                                    fill_max=cfg.mtf_fill_max, select=cfg.mtf_select, generator=generator,
                                    temperature=cfg.mtf_temperature)
            logits2 = diffusion_logits(lm, c2.xt, c2.x0, block_length, doc_ids, windows=c2.windows)
            parts2 = stream_losses(logits2, c2, cfg.weighting, cfg.visible_normalizer, self.edit_ids,
                                   cfg.levenshtein_label_weight)
            loss = loss + cfg.mtf_weight * self._turn_loss(parts2)
            filled = draft >= 0
            metrics["mtf_loss_m2t"] = float(parts2["m2t"].detach())
            metrics["mtf_loss_t2t"] = float(parts2["t2t"].detach())
            metrics["mtf_error_rate"] = float(c2.t2t.sum()) / max(1, int(filled.sum()))
            if "acc_t2t" in parts2:
                metrics["mtf_acc_t2t"] = float(parts2["acc_t2t"])
            out = ObjectiveOutput(loss=loss, metrics=metrics, corruption=c, mtf=c2, mtf_draft=draft)
        metrics["loss"] = float(loss.detach())
        metrics["mtf"] = float(bool(out.mtf is not None))
        return out

"""Does one EBPO update move the ELBO estimate the right way? (issue 5 diagnosis)

Rolls out 16 prompts x G from MODEL, makes one EBPO update (the config's inner steps), then
re-estimates every trained response's per-token ELBO log-likelihood with 16 fresh noise levels and
prints the mean change for positive- and negative-advantage responses and their correlation with
the advantage. A correct update raises the first relative to the second.

    .venv/bin/python benchmarks/ebpo_direction.py outputs/train_table_sudoku/t2t_keep/sft/model \
        conf/rl/sudoku_demo.yaml optim.lr=1e-4 [key=value ...]
"""
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from components.rl.run import resolve_config  # noqa: E402
from components.rl.rewards import CombinedReward  # noqa: E402
from components.rl.rollouts import decode_config, generate_rollouts, score_rollouts, load_prompts  # noqa: E402
from components.rl.ebpo import PreparedBatch, damp_negative, group_advantages, optimise_batch  # noqa: E402
from components.rl.estimator import SequenceLayout, draw_masks, noise_levels, sequence_log_likelihood  # noqa: E402
from model import DiffusionLM  # noqa: E402
from model.tokenizer import load_tokenizer  # noqa: E402

torch.set_num_threads(1)
M, CONFIG = sys.argv[1], sys.argv[2]
cfg = resolve_config(CONFIG, sys.argv[3:])
tok = load_tokenizer(M); lm = DiffusionLM.from_pretrained(M)
reward = CombinedReward.from_specs(cfg.rewards, cfg.accuracy_reward)
train, held = load_prompts(cfg.prompts)
torch.manual_seed(0)
dcfg = decode_config(cfg.rollout, tok, temperature=cfg.rollout.temperature, seed=0)
batch = score_rollouts(generate_rollouts(lm, tok, train[:16], cfg.rollout.group_size, dcfg, cfg.prompts.template), reward)
adv = damp_negative(group_advantages(batch.rewards, cfg.rollout.group_size, scale=cfg.optim.scale_advantages), cfg.optim.negative_scale)
keep = (adv != 0).nonzero().flatten()
rolls = [batch.rollouts[int(i)] for i in keep]
layout = SequenceLayout.from_lists([r.prompt_ids for r in rolls], [r.response_ids for r in rolls], dcfg.block_length)
g = torch.Generator().manual_seed(1)
levels, weights = noise_levels(cfg.estimator, g)
masks = draw_masks(layout, levels, tok.mask_id, g)
# independent evaluation masks (many levels) to measure the change
ge = torch.Generator().manual_seed(2)
ecfg = replace(cfg.estimator, num_levels=16)
elev, ew = noise_levels(ecfg, ge); emasks = draw_masks(layout, elev, tok.mask_id, ge)
def est(model):
    with torch.no_grad():
        lp, _ = sequence_log_likelihood(model, layout, emasks, ew, tok.mask_id)
    return lp / layout.response_lengths()
before = est(lm)
prepared = PreparedBatch(layout, adv[keep], masks, weights, tok.mask_id)
opt = torch.optim.AdamW(lm.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), weight_decay=0)
def step():
    n = torch.nn.utils.clip_grad_norm_(lm.parameters(), cfg.optim.grad_clip); opt.step(); opt.zero_grad(); return float(n)
lm.train()
print(optimise_batch(lm, prepared, cfg.estimator, cfg.optim, lambda l: l.backward(), step))
lm.eval()
after = est(lm)
d = after - before
a = adv[keep]
print(f"samples {len(a)}: positive {int((a>0).sum())}, negative {int((a<0).sum())}")
print(f"mean Δ(log p / token): positive-adv {d[a>0].mean():+.5f}, negative-adv {d[a<0].mean():+.5f}")
print(f"corr(Δ, advantage) = {torch.corrcoef(torch.stack([d, a]))[0,1]:+.3f}")

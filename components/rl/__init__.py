"""EBPO: reinforcement learning for the draft-and-edit model (docs/design.md, "EBPO"; LLaDA2.1 eqs. 4–5).

Modules: `rollouts` (prompts, G sampled responses per prompt from `model.generate`, rewards),
`rewards` (registry by name), `estimator` (the vectorised ELBO block likelihood), `ebpo` (group
advantages, clipped surrogate, the batch update), `module` (LightningModule, manual optimisation),
`run` (`run_rl(cfg, model_dir, out_dir)`, the one entry point), `cli` (`draftedit rl`).

Decisions where the paper is silent:
* The prompt enters the composite input once, as a clean prefix; only the prompt's last partial
  block is duplicated with the response, because the decoder lets those prompt tokens attend to the
  still-masked response tokens of their block (see `estimator`).
* A response, for the likelihood, runs to the end of the block holding its last returned token
  (EOS fill included): exactly what the decoder produced there, and under the block-causal mask the
  later blocks cannot change those blocks' likelihood.
* Noise levels and masks are drawn once per rollout batch and shared by θ, θ_old and the reference.
  θ_old's estimate is θ's own at the first optimisation step (θ = θ_old then), so no copy of the old
  weights and no extra forward are needed; later steps reuse it.
* The estimate models drafting (M2T) only; T2T edits made during the rollout are part of the sampled
  response but not of its likelihood proxy (the paper gives no T2T likelihood).
* Distributed: under DDP every rank trains on all of its samples (equal backward counts); under
  FSDP, rollouts decode with a full-weight copy refreshed before each step.
"""

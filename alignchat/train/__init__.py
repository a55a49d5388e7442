"""Training stages: the shared loop and run directory (`loop.py`) plus one module per verb (pretrain, sft,
rm, ppo, dpo; `compare` builds their comparison data), and the reward model they share (`reward.py`).

Every stage reads its inputs from disk and writes a normal checkpoint directory, so each can be run,
resumed and distributed (`torchrun`) on its own. The reward model and DPO reuse `loop.Trainer` by passing a
`loss_fn`; PPO has its own update, but keeps its checkpoints, logs, schedule and resume in the same
`loop.RunDir`, and its PPO-ptx term is the loop's `lm_loss`. See docs/training.md and docs/alignment.md.
"""

"""Training stages: one shared loop (`loop.py`) plus one module per stage (pretrain, sft, reward, ppo, dpo).

Every stage reads its inputs from disk and writes a normal checkpoint directory, so each can be run,
resumed and distributed on its own. Stages with their own objective (reward model, DPO, PPO-ptx) reuse
`loop.Trainer` by passing a `loss_fn`; see docs/training.md.
"""

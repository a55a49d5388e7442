"""K responses per prompt from one of our checkpoints, through the shared engine (`alignchat.engine`).

Notable choices:
- Every response has its own seed (`seed * 1_000_003 + n` for the n-th response of the call), so a
  rerun draws the same responses and no two responses of one prompt share a random stream.
- `systems` gives response i the system prompt `systems[i % len(systems)]` (cycled; "" or None: none),
  so one ranking can hold replies written under contrasting instructions.
- `device` "auto" (or None) is CUDA when present, else the CPU (`alignchat.commands.common.pick_device`).
"""
from __future__ import annotations

from .prompts import with_system


def sample_responses(model_path: str, prompts: list[list[dict]], k: int, max_tokens: int, temperature: float,
                     top_p: float, seed: int, batch: int = 16, progress: bool = True,
                     systems: list[str] | None = None, device: str | None = None, dtype: str | None = None,
                     loaded=None) -> list[list[str]]:
    """K responses per prompt; response i is written under systems[i % len(systems)] when systems are given.

    `loaded`: a (model, tokenizer) already loaded (else `model_path` is loaded on `device` in `dtype`)."""
    from ...commands.common import pick_device
    from ...commands.common import load_for_inference
    from ...engine import Engine, SamplingParams
    model, tok = loaded or load_for_inference(model_path, pick_device(device), dtype)[:2]
    engine = Engine(model, tok, max_batch=batch)
    systems = systems or [None]
    flat_ids = [tok.render_chat(with_system(p, systems[i % len(systems)]), add_generation_prompt=True).ids
                for p in prompts for i in range(k)]
    params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                             seed=seed * 1_000_003 + n) for n in range(len(flat_ids))]
    gens = engine.generate(flat_ids, params, progress=progress)
    return [[g.text.strip() for g in gens[i * k:(i + 1) * k]] for i in range(len(prompts))]

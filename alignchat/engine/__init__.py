"""The generation engine: batched decoding on a static, slot-based KV cache, sampling, beam search and scoring.

Chat, the HTTP API, evaluation and PPO rollouts all generate through this one engine, so making it faster
speeds up all four. It knows nothing about HTTP. `from alignchat.engine import Engine, SamplingParams`.

Modules:
- `slots`: `Engine`, continuous batching (admission with one batched prefill, `step()`, abort) and the
  conveniences built on it (`generate`, `stream`, `chat`).
- `prefix`: the prefix cache: which tokens each slot's keys and values belong to, and which slot a new
  prompt takes and how much of it is reused rather than computed.
- `request`: one request's state (`Request`: slot, position, generator, stop strings, stream decoder) and
  what comes out (`Generation`, `StepOutput`).
- `sampling`: `SamplingParams` and the batched sampler: penalties, per-request logits processors (where
  constrained decoding plugs in), greedy, temperature, top-k and top-p by inverse CDF.
- `decode`: one decode step, eager, replayed as CUDA graphs, or compiled (`compiled`: `torch.compile` per
  batch/length bucket on a CPU, cached on disk; opt-in, `engine.decode_mode = "compiled"`).
- `grammar`: JSON-Schema and Lark constraints (llguidance) as per-request logits processors, for structured
  output and forced tool calls.
- `beam`: beam search. `scoring`: log-likelihoods and per-token log-probabilities. Both use the model
  with caches of their own, never the request slots.

Notable choices:
- A preallocated KV cache with one slot per sequence and an explicit position per token: requests join
  between steps, decode together one token per `step()`, and leave when they finish or are aborted.
- Prefix caching (on by default; `Engine(prefix_cache=False)` turns it off): a slot keeps its keys and
  values when its request leaves, so turn N of a conversation computes only its new tokens and requests
  that share a system prompt share its keys (copied between slots). In float32 the outputs equal uncached
  ones (in bfloat16 the rounding changes with the computation's shape, as it does with batching).
- Each request carries its own sampling parameters and random generator, so a seeded request gives the
  same text alone or batched, and greedy requests are unaffected by their neighbours.
- Sampling: temperature (0 = greedy), top-k, top-p, repetition penalty (CTRL-style, over prompt and
  output), OpenAI presence/frequency penalties, stop strings (held back until they can no longer match,
  so they never leak into the stream) and stop token ids.
- On CUDA, decode steps replay CUDA graphs (`cuda_graphs=True`); prefill stays eager.
- The tunables `FILTER_CANDIDATES` (sampling.py), `GRAPH_KV_BLOCK` and `COMPILE_KV_BLOCK` (decode.py) and
  `MIN_REUSE` (prefix.py, read when an engine is made) live in the module that reads them: set
  `alignchat.engine.sampling.FILTER_CANDIDATES`, not a copy here.
"""
from __future__ import annotations

from .request import Generation, Request, StepOutput
from .sampling import LogitsProcessor, SamplingParams
from .slots import Engine

__all__ = ["Engine", "SamplingParams", "LogitsProcessor", "Generation", "StepOutput", "Request"]

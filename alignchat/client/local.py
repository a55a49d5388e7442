"""`LocalClient`: a checkpoint (registry name, checkpoint directory, .gguf or Hugging Face directory) on our
own engine (`alignchat.engine.Engine`), in this process.

Notable choices:
- The model loads on first use, on the device and in the dtype `commands.common.load_for_inference` picks
  (`device` "auto" or None: CUDA when present, else the CPU; bfloat16 on CUDA, float32 on the CPU), so a
  client that is never asked anything costs nothing. A model already in memory can be passed as `loaded`.
- Generation fills the engine's `max_batch` slots; scoring runs `Engine.loglikelihood` /
  `Engine.loglikelihood_choices` (one pass over a shared context for all of its continuations).
- Over-long inputs keep their rightmost context tokens when scoring; a continuation longer than the
  context is cut to its first tokens with no context. Prompts that do not fit fail with
  `ContextLengthError` unless `generate(..., truncate=True)`.
- Scores of `loglikelihood_choices` are remembered by text (a bounded cache): scoring is deterministic and
  an evaluation suite asks for the same item more than once.
- `threads` (CPU only) sets torch's thread count: 0 = the cores not already busy by the load average. On a
  shared machine, oversubscribed BLAS threads spin and wait on each other; under a load of 10 on 2 cores
  one thread ran the scoring pass 3x faster than two. None leaves torch's setting alone.
"""
from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from typing import Sequence

from .base import Completion, ModelClient, Prompt, Score, check_prompt, is_conversation, is_token_ids
from ..commands.common import pick_device
from .sampling import SAMPLING_DEFAULTS, Sampling

MEMO_ENTRIES = 16384


def cpu_threads(requested: int = 0) -> int:
    """Threads for CPU inference: `requested`, or (0) the cores not already busy, at least 1."""
    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


class LocalClient(ModelClient):
    kind = "local"

    def __init__(self, model: str, device: str | None = "auto", dtype: str | None = None, max_batch: int = 8,
                 max_seq_len: int | None = None, threads: int | None = None, score_batch: int = 16,
                 loaded=None, quantize: str | None = None, compile: str | None = None):
        super().__init__()
        self.model_spec = str(model)
        self.name = self.model_spec
        self.device = pick_device(device)
        self.dtype = dtype
        self.quantize = quantize  # "int8" | "int4": weights quantised at load (alignchat.quant)
        self.compile = compile  # "on": compiled CPU decode steps (commands.common.apply_compile)
        self.max_batch, self.max_seq_len, self.score_batch = max_batch, max_seq_len, score_batch
        self.threads = threads
        self._loaded = loaded  # (model, tokenizer, meta) already in memory
        self.meta: dict = {}
        self._engine = None
        self._memo: OrderedDict = OrderedDict()

    # --- the model --------------------------------------------------------------------------------
    @property
    def engine(self):
        if self._engine is None:
            import torch

            from ..commands.common import apply_compile, load_for_inference
            from ..engine import Engine
            if self.threads is not None and self.device.startswith("cpu"):
                torch.set_num_threads(cpu_threads(self.threads))
            model, tok, meta = self._loaded or load_for_inference(self.model_spec, self.device, self.dtype,
                                                                        self.quantize)
            self.device = str(next(model.parameters()).device)
            self.meta = meta
            self._engine = Engine(model, tok, max_batch=self.max_batch, max_seq_len=self.max_seq_len)
            self.meta["compile"] = apply_compile(self._engine, self.compile)
        return self._engine

    @property
    def tokenizer(self):
        return self.engine.tok

    @property
    def model(self):
        return self.engine.model

    @property
    def max_context(self) -> int:
        return self.engine.max_seq_len

    def describe(self) -> dict:
        eng = self.engine
        return {"backend": "engine", "model": str(self.meta.get("name") or self.model_spec), "device": self.device,
                "stage": self.meta.get("stage"), "params": sum(p.numel() for p in eng.model.parameters())}

    # --- tokens -----------------------------------------------------------------------------------
    def _ids(self, prompt: Prompt) -> list[int]:
        check_prompt(prompt)
        if is_conversation(prompt):
            return self.tokenizer.render_chat(prompt, add_generation_prompt=True).ids
        if is_token_ids(prompt):
            return list(prompt)
        return self.tokenizer.encode(prompt)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self._ids(prompt))

    def fit_text(self, text: str) -> str:
        ids = self.tokenizer.encode(text, add_bos=False)
        limit = self.max_context - 1
        return text if len(ids) <= limit else self.tokenizer.decode(ids[:limit])

    # --- generation -------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], sampling: Sampling = SAMPLING_DEFAULTS,
                 truncate: bool = False) -> list[Completion]:
        import torch
        eng = self.engine
        ids = [self._ids(p) for p in prompts]
        if truncate:
            budget = max(eng.max_seq_len - sampling.max_tokens, 1)
            ids = [x[-budget:] for x in ids]
        params = [sampling.engine_params(i) for i in range(len(ids))]
        t0 = time.perf_counter()
        with torch.inference_mode():
            outs = eng.generate(ids, params)
        self.usage.generate_seconds += time.perf_counter() - t0
        res = [Completion(o.text, o.prompt_tokens, len(o.token_ids), o.finish_reason) for o in outs]
        self.usage.prompt_tokens += sum(r.prompt_tokens for r in res)
        self.usage.completion_tokens += sum(r.completion_tokens for r in res)
        return res

    # --- scoring ----------------------------------------------------------------------------------
    def _context_ids(self, context: Prompt) -> list[int]:
        if isinstance(context, str) and not context:
            return []
        return self._ids(context)

    def _continuation_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_bos=False)

    def loglikelihood(self, pairs: Sequence[tuple[Prompt, str]]) -> list[Score]:
        import torch
        eng = self.engine
        encoded = [(self._context_ids(c), self._continuation_ids(x)) for c, x in pairs]
        limit = eng.max_seq_len - 1  # the engine needs one context token before the continuation
        encoded = [(c, x) if len(x) <= limit else ([], x[:limit]) for c, x in encoded]
        t0 = time.perf_counter()
        with torch.inference_mode():
            res = eng.loglikelihood(encoded, batch_size=self.score_batch)
        self.usage.score_seconds += time.perf_counter() - t0
        self.usage.scored_tokens += sum(len(c) + len(x) for c, x in encoded)
        return [Score(lp, greedy, len(x)) for (lp, greedy), (_, x) in zip(res, encoded)]

    @staticmethod
    def _memo_key(context: Prompt, continuations: Sequence[str]) -> tuple:
        ctx = context if isinstance(context, str) else json.dumps(context, sort_keys=True, ensure_ascii=False)
        return (ctx, tuple(continuations))

    def loglikelihood_choices(self, items: Sequence[tuple[Prompt, Sequence[str]]]) -> list[list[Score]]:
        import torch
        keys = [self._memo_key(c, xs) for c, xs in items]
        todo = {}
        for k, (c, xs) in zip(keys, items):
            if k not in self._memo and k not in todo:
                todo[k] = (c, xs)
        if todo:
            encoded = [(self._context_ids(c), [self._continuation_ids(x) for x in xs]) for c, xs in todo.values()]
            t0 = time.perf_counter()
            with torch.inference_mode():
                res = self.engine.loglikelihood_choices(encoded)
            self.usage.score_seconds += time.perf_counter() - t0
            self.usage.scored_tokens += sum(len(c) + sum(len(x) for x in xs) for c, xs in encoded)
            for k, (_, xs), row in zip(todo, encoded, res):
                self._memo[k] = [Score(lp, greedy, len(x)) for (lp, greedy), x in zip(row, xs)]
        out = []
        for k in keys:
            self._memo.move_to_end(k)
            out.append(list(self._memo[k]))
        while len(self._memo) > MEMO_ENTRIES:
            self._memo.popitem(last=False)
        return out

    def reply_tokens(self, conversation: list[dict], reply: str) -> tuple[list[int], list[int]]:
        """(context, reply tokens) of the conversation followed by `reply` as the assistant's turn, cut where
        that turn starts; the reply's tokens include its end-of-turn marker."""
        r = self.tokenizer.render_chat(list(conversation) + [{"role": "assistant", "content": reply}])
        mask = r.assistant_mask
        end = len(mask) - mask[::-1].index(1) if 1 in mask else len(mask)  # the last assistant turn's run
        start = end
        while start > 0 and mask[start - 1]:
            start -= 1
        return r.ids[:start], r.ids[start:end]

    def reply_loglikelihood(self, pairs: Sequence[tuple[list[dict], str]]) -> list[Score]:
        import torch
        encoded = [self.reply_tokens(conv, reply) for conv, reply in pairs]
        # an empty reply (no tokens of its own) is scored as one padding token, so every pair has a score
        scored = [(ctx, cont or [self.tokenizer.pad_id]) for ctx, cont in encoded]
        t0 = time.perf_counter()
        with torch.inference_mode():
            res = self.engine.loglikelihood(scored, batch_size=self.score_batch)
        self.usage.score_seconds += time.perf_counter() - t0
        self.usage.scored_tokens += sum(len(c) + len(x) for c, x in scored)
        return [Score(lp, greedy, len(cont)) for (lp, greedy), (_, cont) in zip(res, encoded)]

"""One decode step of the slot engine: write one token per active request into the KV cache and return the
next-token logits, eagerly, by replaying a captured CUDA graph, or through a compiled step (compiled.py).

Notable choices:
- On CUDA, decode steps replay CUDA graphs (mode "graph"): at this model size a step is mostly the launch
  of hundreds of small kernels, which a graph replays in one call. Shapes must be static, so the batch is
  padded up to a bucket (1, 2, 4, 8, ... max_batch) and the attended cache length up to a multiple of
  `GRAPH_KV_BLOCK`; one graph per (batch, length) bucket is captured on first use, all sharing one memory
  pool. Padding rows write into the cache's spare slot, which no request owns.
- Mode "eager" runs the exact batch without padding; eager decode reads the cache of consecutive slots as
  a view rather than a gathered copy. A compiled or wrapped model decodes eagerly (capturing it would
  capture the compiler too), as does a CPU. A failed capture warns and switches to eager for good: no
  request is lost to an optimisation.
- Mode "padded" runs the graph path's padding without capturing, so that path can be checked on a CPU.
- Mode "compiled" (on a CPU, `engine.decode_mode = "compiled"`, the verbs' `--compile on`) runs the same
  padding through `torch.compile`: one static-shape graph per (batch bucket, cache length rounded up to
  `COMPILE_KV_BLOCK`), compiled when a step first needs it and cached on disk. A failed compile
  warns and switches to eager for good, as a failed capture does.
- The capture runs in thread-local mode: the server may run other CUDA work (scoring, embeddings) on
  other threads meanwhile.
"""
from __future__ import annotations

import warnings

import torch

from ..model import KVCache, Transformer
from .compiled import CompiledStep, CompileFailed

GRAPH_KV_BLOCK = 256  # decode graphs attend to the cache in lengths rounded up to this
COMPILE_KV_BLOCK = 128  # compiled CPU steps likewise (chosen by measuring: docs/performance.md)


class _DecodeGraph:
    """One captured decode step for a fixed (batch, cache length): static inputs in, logits out."""

    def __init__(self, ids, pos, slots, logits, graph):
        self.ids, self.pos, self.slots, self.logits, self.graph = ids, pos, slots, logits, graph


class Decoder:
    """The decode step for one engine's cache: `decode(cache, tokens, positions, slots)` -> (n, vocab) logits."""

    def __init__(self, model, device: torch.device, max_batch: int, max_seq_len: int, scratch_slot: int,
                 cuda_graphs: bool = True):
        self.model = model
        self.device = device
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len
        self.scratch_slot = scratch_slot
        self.mode = "graph" if cuda_graphs and device.type == "cuda" and isinstance(model, Transformer) else "eager"
        self._graphs: dict[tuple[int, int], _DecodeGraph] = {}
        self._graph_pool = None
        self.compiled = None  # the CompiledStep of mode "compiled", made on its first step

    def decode(self, cache: KVCache, tokens: list[int], positions: list[int], slots: list[int]) -> torch.Tensor:
        """Next-token logits (n, vocab) after writing one token per row into the cache."""
        n, dev = len(tokens), self.device
        kv_len = max(positions) + 1
        if self.mode == "eager":
            ids = torch.tensor(tokens, device=dev)[:, None]
            pos = torch.tensor(positions, device=dev)[:, None]
            consecutive = slots == list(range(slots[0], slots[0] + n))
            return self.model(ids, positions=pos, kv_cache=cache, slots=torch.tensor(slots, device=dev),
                              kv_len=kv_len, slot_range=(slots[0], slots[0] + n) if consecutive else None)[:, -1].float()
        b = next(x for x in self.batch_buckets() if x >= n)
        block = COMPILE_KV_BLOCK if self.mode == "compiled" else GRAPH_KV_BLOCK
        L = min(self.max_seq_len, -(-kv_len // block) * block)
        pad = b - n  # padding rows: token 0 at position 0 of the scratch slot
        ids = torch.tensor(tokens + [0] * pad, device=dev)[:, None]
        pos = torch.tensor(positions + [0] * pad, device=dev)[:, None]
        sl = torch.tensor(slots + [self.scratch_slot] * pad, device=dev)
        if self.mode == "padded":
            return self.model(ids, positions=pos, kv_cache=cache, slots=sl, kv_len=L)[:n, -1].float()
        if self.mode == "compiled":
            try:
                if self.compiled is None:
                    kv_buckets = -(-self.max_seq_len // COMPILE_KV_BLOCK)
                    self.compiled = CompiledStep(self.model, n_buckets=len(self.batch_buckets()) * kv_buckets)
                return self.compiled(cache, ids, pos, sl, L)[:n]
            except CompileFailed as e:  # never lose a request to an optimisation: fall back to eager decoding
                warnings.warn(f"compiling the decode step failed ({e}); decoding eagerly from now on")
                self.mode = "eager"
                return self.decode(cache, tokens, positions, slots)
        g = self._graphs.get((b, L))
        if g is None:
            try:
                g = self._capture(cache, b, L)
            except RuntimeError as e:  # never lose a request to an optimisation: fall back to eager decoding
                warnings.warn(f"CUDA graph capture failed ({e}); decoding eagerly from now on")
                self.mode = "eager"
                return self.decode(cache, tokens, positions, slots)
        g.ids.copy_(ids)
        g.pos.copy_(pos)
        g.slots.copy_(sl)
        g.graph.replay()
        return g.logits[:n].clone()  # the static output is overwritten by the next replay

    def batch_buckets(self) -> list[int]:
        """The batch sizes graphs are captured for: powers of two below max_batch, then max_batch."""
        out, b = [], 1
        while b < self.max_batch:
            out.append(b)
            b *= 2
        return out + [self.max_batch]

    def _capture(self, cache: KVCache, b: int, L: int) -> _DecodeGraph:
        dev = self.device
        ids = torch.zeros((b, 1), dtype=torch.long, device=dev)
        pos = torch.zeros((b, 1), dtype=torch.long, device=dev)
        slots = torch.full((b,), self.scratch_slot, dtype=torch.long, device=dev)  # warm-up writes stay there

        def run():
            return self.model(ids, positions=pos, kv_cache=cache, slots=slots, kv_len=L)[:, -1].float()

        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm up (kernel selection, workspaces) outside the capture
            for _ in range(2):
                run()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the server may run other CUDA work (scoring, embeddings) on other threads meanwhile
        with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
            logits = run()
        self._graph_pool = graph.pool()
        g = self._graphs[(b, L)] = _DecodeGraph(ids, pos, slots, logits, graph)
        return g

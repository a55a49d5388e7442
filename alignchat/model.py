"""The Transformer: one Llama-style decoder-only `nn.Module` family for every stage.

Notable choices:
- Llama blocks: pre-norm RMSNorm, rotary position embeddings (the "rotate half" layout of Hugging Face,
  so HF weights load unchanged and GGUF weights are un-permuted on import), SwiGLU MLP, grouped-query
  attention through `scaled_dot_product_attention`, optional QKV bias (Qwen2) and tied embeddings.
- Parameter names equal Hugging Face's `LlamaForCausalLM` names, so import/export is a rename-free copy.
- Positions are explicit per token. That one choice serves training (packed documents restart at 0),
  batched prompts of different lengths, and the slot-based KV cache.
- The KV cache is static and preallocated: one slot per sequence, written in place at each token's
  position. Decode steps never change a tensor's shape except the attended key length, which the engine
  can fix to the full cache length for CUDA-graph capture.
- Gemma 3 is the same family, not a second model: config switches add q/k RMSNorm, the post-attention
  and post-MLP ("sandwich") norms, RMSNorm's (1 + weight) convention, GeLU-tanh gating, the √dim
  embedding scale, query_pre_attn_scalar, and local layers that attend through a sliding window with a
  RoPE base of their own. Parameter names are then those of Hugging Face's `Gemma3ForCausalLM`.
- The sliding window is a mask over positions, built once per forward beside the global one, so the KV
  cache, batched decode and the CUDA-graph path (a mask over cache positions) serve local layers as they
  are; the cache keeps every position.
- Reward and value models are the same backbone with a `ScalarHead` (`ScoredTransformer`, through
  `return_hidden=True`), so the reward stage, PPO and eval share one class without importing a stage.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


class RMSNorm(nn.Module):
    """RMSNorm; `plus_one` scales by (1 + weight) in float32 (Gemma), else by weight after the cast (Llama)."""

    def __init__(self, dim: int, eps: float = 1e-5, plus_one: bool = False):
        super().__init__()
        self.eps, self.plus_one = eps, plus_one
        self.weight = nn.Parameter(torch.zeros(dim) if plus_one else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.plus_one:
            return (x * (1.0 + self.weight.float())).to(dtype)
        return self.weight * x.to(dtype)


def _norm(cfg: ModelConfig, dim: int | None = None) -> RMSNorm:
    return RMSNorm(dim or cfg.dim, cfg.norm_eps, plus_one=cfg.norm_plus_one)


def rope_tables(head_dim: int, max_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(max_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (B, T, D) already gathered at each token's position."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return x * cos + _rotate_half(x) * sin


class KVCache:
    """Preallocated keys and values: per layer a (slots, kv_heads, max_len, head_dim) tensor."""

    def __init__(self, cfg: ModelConfig, n_slots: int, max_len: int, device=None, dtype=torch.float32):
        shape = (n_slots, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.n_slots, self.max_len = n_slots, max_len

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)
        if cfg.qk_norm:
            self.q_norm, self.k_norm = _norm(cfg, hd), _norm(cfg, hd)
        self.scale = cfg.query_pre_attn_scalar ** -0.5 if cfg.query_pre_attn_scalar else None

    def forward(self, x, cos, sin, attn_mask=None, cache: KVCache | None = None, slots=None, positions=None,
                prefill: bool = False, slot_range: tuple[int, int] | None = None):
        B, T, _ = x.shape
        cfg = self.cfg
        q = self.q_proj(x).view(B, T, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            ck, cv = cache.k[self.layer_idx], cache.v[self.layer_idx]
            # advanced indices (slot, position) around a slice put (B, T) first: (B, T, H, D)
            ck[slots[:, None], :, positions] = k.transpose(1, 2).to(ck.dtype)
            cv[slots[:, None], :, positions] = v.transpose(1, 2).to(cv.dtype)
            if not prefill:  # prefill attends only to its own fresh keys: causal, no cache read, no mask
                L = attn_mask.shape[-1]  # the cache mask, built once per forward by Transformer.forward
                if slot_range is not None:  # consecutive slots: a view, not a gathered copy of the cache
                    a, b = slot_range
                    k, v = ck[a:b, :, :L].to(q.dtype), cv[a:b, :, :L].to(q.dtype)
                else:
                    k, v = ck[slots, :, :L].to(q.dtype), cv[slots, :, :L].to(q.dtype)
        # grouped-query attention: SDPA broadcasts each KV head over its group without copying K and V
        gqa = cfg.n_heads != cfg.n_kv_heads
        if attn_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa, scale=self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa, scale=self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, cfg.n_heads * cfg.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.gelu = cfg.mlp_act == "gelu_tanh"

    def forward(self, x):
        g = self.gate_proj(x)
        g = F.gelu(g, approximate="tanh") if self.gelu else F.silu(g)
        return self.down_proj(g * self.up_proj(x))


class Block(nn.Module):
    """Llama: post_attention_layernorm is the MLP's pre-norm. With sandwich norms (Gemma 3, Hugging Face's
    names) it normalises the attention output, and pre_/post_feedforward_layernorm wrap the MLP."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.sandwich = cfg.sandwich_norms
        self.local = cfg.is_local_layer(layer_idx)
        self.input_layernorm = _norm(cfg)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = _norm(cfg)
        if self.sandwich:
            self.pre_feedforward_layernorm = _norm(cfg)
            self.post_feedforward_layernorm = _norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, **attn_kwargs):
        if not self.sandwich:
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, **attn_kwargs)
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, **attn_kwargs))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = _norm(cfg)


class ScalarHead(nn.Module):
    """r(x, y) or V(s): a linear map from the final hidden state to one number."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 1)
        nn.init.normal_(self.proj.weight, std=1.0 / math.sqrt(dim + 1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden).squeeze(-1)


class Transformer(nn.Module):
    """Decoder-only LM. `forward(ids)` -> logits (B, T, vocab); `return_hidden=True` -> (B, T, dim)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        if cfg.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.init_rope()

    def init_rope(self, length: int | None = None) -> None:
        """(Re)build the RoPE tables: the global ones, and the local layers' when their base differs."""
        cfg = self.cfg
        length = length or cfg.max_seq_len
        device = self.rope_cos.device if hasattr(self, "rope_cos") and self.rope_cos.device.type != "meta" else None
        cos, sin = rope_tables(cfg.head_dim, length, cfg.rope_theta, device=device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if cfg.rope_local_theta is not None and cfg.rope_local_theta != cfg.rope_theta:
            cos, sin = rope_tables(cfg.head_dim, length, cfg.rope_local_theta, device=device)
            self.register_buffer("rope_cos_local", cos, persistent=False)
            self.register_buffer("rope_sin_local", sin, persistent=False)

    # --- construction helpers -------------------------------------------------
    def init_weights(self, seed: int | None = None, std: float = 0.02) -> "Transformer":
        """GPT-2 style init: N(0, 0.02), residual projections scaled by 1/sqrt(2·layers)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                (nn.init.zeros_ if self.cfg.norm_plus_one else nn.init.ones_)(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            else:
                s = std / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen) * s)
        return self

    @property
    def output_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def ensure_rope(self, length: int) -> None:
        if length > self.rope_cos.shape[0]:
            self.init_rope(length)

    # --- forward ----------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                slots: torch.Tensor | None = None, kv_len: int | None = None,
                return_hidden: bool = False, prefill: bool = False,
                slot_range: tuple[int, int] | None = None) -> torch.Tensor:
        """
        input_ids: (B, T). positions: (B, T) absolute positions (default 0..T-1).
        attn_mask: bool (B, 1, T, T), True where a query may attend a key (packing, padding); default causal.
        kv_cache/slots: with a cache, keys/values are written at (slot, position) and each query attends
        its slot's keys at positions <= its own; kv_len bounds how many cache positions are read.
        prefill: the rows start at position 0 (right-padded), so each attends causally to its own new keys
        alone; the cache is written but not read, and attention needs no mask (flash kernels apply).
        slot_range: (first, last + 1) when `slots` are consecutive, so the cache is read as a view.
        """
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        x = self.model.embed_tokens(input_ids)
        if self.cfg.embed_scale:
            x = x * torch.tensor(self.cfg.dim ** 0.5, dtype=x.dtype)
        kw = dict(attn_mask=attn_mask)
        if kv_cache is not None:
            if slots is None:
                slots = torch.arange(B, device=input_ids.device)
            # each query attends its slot's keys at positions <= its own; one mask serves every layer
            key_pos = torch.arange(kv_len or kv_cache.max_len, device=input_ids.device)
            kw.update(cache=kv_cache, slots=slots, positions=positions, prefill=prefill, slot_range=slot_range,
                      attn_mask=None if prefill else (key_pos[None, None, :] <= positions[:, :, None]).unsqueeze(1))
        local_kw, local_rope = kw, (cos, sin)
        if self.cfg.sliding_window is not None and any(layer.local for layer in self.model.layers):
            local_kw = dict(kw, attn_mask=self._window_mask(kw["attn_mask"], positions, T,
                                                            key_pos if kv_cache is not None else None, prefill))
            if hasattr(self, "rope_cos_local"):
                local_rope = self.rope_cos_local[positions], self.rope_sin_local[positions]
        for layer in self.model.layers:
            x = layer(x, *local_rope, **local_kw) if layer.local else layer(x, cos, sin, **kw)
        x = self.model.norm(x)
        if return_hidden:
            return x
        return self.logits_from_hidden(x)

    def _window_mask(self, mask, positions, T: int, key_pos, prefill: bool):
        """The local layers' mask: the global one (or causal) and, as Hugging Face's Gemma 3, keys at most
        sliding_window - 1 positions before the query. Reading the cache, by cache position; otherwise (training,
        prefill) by index in the row, which packed documents' block mask keeps within one document."""
        W = self.cfg.sliding_window
        if key_pos is not None and not prefill:
            return mask & (key_pos[None, None, :] > positions[:, :, None] - W).unsqueeze(1)
        if T <= W:  # the window covers the whole row: the global mask as it is
            return mask
        i = torch.arange(T, device=positions.device)
        band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - W)  # (T, T) causal within the window
        return band[None, None] if mask is None else mask & band

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:  # a Linear, or a quantised head (alignchat.quant) even when tied
            return self.lm_head(hidden)
        return F.linear(hidden, self.model.embed_tokens.weight)


class ScoredTransformer(Transformer):
    """A Transformer with a scalar head: r(x, y) for a reward model, V(s) for PPO's critic.

    `forward(ids)` is still the language model. `forward(ids, score_index=idx)` returns the head's value at
    position idx[b] of each row (B,); `forward(ids, score_all=True)` returns it at every position (B, T).
    Its checkpoint is an ordinary one with `score_head.proj.{weight,bias}` beside the LM weights
    (`alignchat.hub.load_scored_model` reads it).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.score_head = ScalarHead(cfg.dim)

    def forward(self, input_ids, *args, score_index: torch.Tensor | None = None, score_all: bool = False, **kw):
        if score_index is None and not score_all:
            return super().forward(input_ids, *args, **kw)
        hidden = super().forward(input_ids, *args, return_hidden=True, **kw)
        scores = self.score_head(hidden).float()
        if score_all:
            return scores
        return scores.gather(1, score_index.view(-1, 1)).squeeze(1)

    def freeze_lm_head(self) -> "ScoredTransformer":
        """Stop training the LM's output projection, which no score uses (an untied `lm_head`): it would get
        no gradient anyway, and DistributedDataParallel needs every trained parameter to get one."""
        if self.lm_head is not None:
            self.lm_head.requires_grad_(False)
        return self

    @classmethod
    def from_lm(cls, lm: Transformer, head_state: dict | None = None) -> "ScoredTransformer":
        model = cls(lm.cfg)
        model.load_state_dict(lm.state_dict(), strict=False)
        if head_state:
            model.score_head.load_state_dict(head_state)
        return model.to(next(lm.parameters()).device)

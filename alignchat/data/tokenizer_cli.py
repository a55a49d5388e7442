"""`alignchat tokenizer train`: a byte-level BPE on a Chinese+English mixture, with the chat special tokens.

Notable choices:
- Training itself is `alignchat.tokenizer.train_bpe` (Hugging Face `tokenizers`); this module only
  gathers the mixture, holds out a sample for measurement and writes the report.
- Each document is labelled Chinese or English by its share of CJK characters, and the mixture is
  balanced by characters (`--zh-share`, default 0.5) so neither language starves the merges.
- One document in `heldout_every` is kept out of training and used to report tokens per character for
  each language (lower is better; the byte fallback alone would be ~1 for English, ~3 for Chinese).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError


@dataclass
class TokenizerTrainConfig:
    vocab_size: int = 8192
    min_frequency: int = 2
    max_chars: int = 20_000_000  # total training characters, both languages together
    zh_share: float = 0.5
    heldout_every: int = 50
    text_field: str = "text"


def language_of(text: str) -> str:
    sample = text[:2000]
    letters = [c for c in sample if c.isalpha()]
    if not letters:
        return "other"
    cjk = sum(1 for c in letters if 0x3400 <= ord(c) <= 0x9FFF or 0xF900 <= ord(c) <= 0xFAFF)
    return "zh" if cjk / len(letters) > 0.3 else "en"


def gather_mixture(inputs: list[str], cfg: TokenizerTrainConfig) -> tuple[list[str], dict[str, list[str]]]:
    """Read inputs, split into training texts (language-balanced by characters) and held-out texts."""
    from .readers import ReadOptions, read_documents

    budget = {"zh": cfg.max_chars * cfg.zh_share, "en": cfg.max_chars * (1 - cfg.zh_share)}
    used = {"zh": 0, "en": 0, "other": 0}
    train: list[str] = []
    heldout: dict[str, list[str]] = {"zh": [], "en": []}
    for i, doc in enumerate(read_documents(inputs, ReadOptions(text_field=cfg.text_field))):
        lang = language_of(doc.text)
        if lang in heldout and i % cfg.heldout_every == cfg.heldout_every - 1:
            heldout[lang].append(doc.text)
            continue
        if lang in budget and used[lang] >= budget[lang]:
            # the other language may still need text; a pure-language input fills only its share
            if all(used[k] >= budget[k] for k in budget):
                break
            continue
        used[lang] += len(doc.text)
        train.append(doc.text)
    if not train:
        raise UserError(f"no text found in {', '.join(inputs)}")
    return train, heldout


def tokens_per_char(tok, texts: list[str]) -> float | None:
    chars = sum(len(t) for t in texts)
    if not chars:
        return None
    return sum(len(ids) for ids in tok.encode_batch(texts)) / chars


def train_tokenizer(inputs: list[str], out: str | Path, cfg: TokenizerTrainConfig | None = None,
                    progress: bool = True) -> dict:
    from ..fetch import atomic_write_text
    from ..tokenizer import CHAT_SPECIAL_TOKENS, train_bpe

    cfg = cfg or TokenizerTrainConfig()
    train, heldout = gather_mixture(inputs, cfg)
    langs = {"zh": 0, "en": 0, "other": 0}
    for t in train:
        langs[language_of(t)] += len(t)
    print(f"training BPE (vocab {cfg.vocab_size}) on {len(train)} documents: "
          f"{langs['zh']:,} Chinese / {langs['en']:,} English characters", file=sys.stderr)
    tok = train_bpe(train, cfg.vocab_size, special_tokens=CHAT_SPECIAL_TOKENS,
                    min_frequency=cfg.min_frequency, show_progress=progress)
    out = Path(out)
    tok.save(out)
    report = {
        "vocab_size": tok.vocab_size,
        "special_tokens": CHAT_SPECIAL_TOKENS,
        "train_documents": len(train),
        "train_chars": langs,
        "heldout_documents": {k: len(v) for k, v in heldout.items()},
        "tokens_per_char": {k: tokens_per_char(tok, v) for k, v in heldout.items()},
        "config": asdict(cfg),
        "inputs": [str(p) for p in inputs],
    }
    atomic_write_text(out / "tokenizer_report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("train", help="train a byte-level BPE with the chat special tokens",
                       description="Train a byte-level BPE on .txt/.jsonl/.parquet files or `datasets` "
                                   "directories (a Chinese+English mixture), and report tokens per "
                                   "character for each language on held-out documents.")
    p.add_argument("inputs", nargs="+", help="input files or directories (e.g. cleaned corpora JSONL)")
    p.add_argument("--out", "-o", required=True, help="output directory (tokenizer.json, tokenizer_config.json, "
                                                      "tokenizer_report.json)")
    d = TokenizerTrainConfig()
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="target vocabulary size (default %(default)s)")
    p.add_argument("--min-frequency", type=int, default=d.min_frequency, help="minimum pair count to merge")
    p.add_argument("--max-chars", type=int, default=d.max_chars, help="training characters in total")
    p.add_argument("--zh-share", type=float, default=d.zh_share, help="share of Chinese characters (0..1)")
    p.add_argument("--text-field", default=d.text_field, help="JSONL/parquet text field (default %(default)s)")
    p.add_argument("--no-progress", action="store_true")
    from ..settings import describe_io
    describe_io(p, reads="INPUTS: .txt/.md, .jsonl, .parquet files or `datasets` directories (e.g. cleaned corpora)",
                writes="tokenizer.json, tokenizer_config.json (with the chat template) and tokenizer_report.json "
                       "(tokens per character on held-out documents) in --out")


def run(args) -> int:
    if not 0 <= args.zh_share <= 1:
        raise UserError("--zh-share must be between 0 and 1")
    cfg = TokenizerTrainConfig(vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                               max_chars=args.max_chars, zh_share=args.zh_share, text_field=args.text_field)
    rep = train_tokenizer(args.inputs, args.out, cfg, progress=not args.no_progress)
    tpc = rep["tokens_per_char"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"wrote {args.out}: vocab {rep['vocab_size']}, tokens/char zh {fmt(tpc['zh'])} en {fmt(tpc['en'])}")
    print(json.dumps({"tokens_per_char": tpc, "vocab_size": rep["vocab_size"]}))
    return 0

"""Clean a text corpus for pretraining: personal data, length, quality, exact and near duplicates.

Stages run in this order on each document, and the report counts what each one did:
  1. PII: e-mail addresses, phone numbers (Chinese mobile and landline, North American, international
     "+CC ..."), ID numbers (Chinese 18-digit resident ID with a valid check digit, US SSN) are replaced
     by placeholders `<EMAIL>`, `<PHONE>`, `<ID>`. The document is kept.
  2. length: fewer than `min_chars` or more than `max_chars` non-space characters.
  3. symbols: too large a share of symbol characters (Unicode category S*, and markup such as # { } < > |).
  4. repetition: too much of the text in duplicated lines, or too many repeated token 5-grams
     (tokens are words for Latin script and single characters for Chinese, so both languages work).
  5. exact duplicates: same text after Unicode NFKC, case folding and whitespace collapsing.
  6. near duplicates: MinHash over character 5-gram shingles with LSH (datasketch); a document whose
     estimated Jaccard similarity to an earlier kept one reaches `near_dup_threshold` is dropped.
Thresholds were set by measuring the shipped corpora (docs/data.md) so that real prose, plays and
classical poetry pass while spam, tables of symbols and copy-paste loops do not.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .readers import ReadOptions, read_documents


@dataclass
class CleanConfig:
    min_chars: int = 50
    max_chars: int = 200_000
    max_symbol_ratio: float = 0.25
    max_dup_line_char_fraction: float = 0.3
    max_dup_ngram_fraction: float = 0.35
    near_dup_threshold: float = 0.8
    num_perm: int = 128
    shingle_chars: int = 5
    remove_pii: bool = True
    dedup_exact: bool = True
    dedup_near: bool = True
    seed: int = 1


# --- personal data ------------------------------------------------------------------------------------

EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
# 18-digit Chinese resident ID: 6-digit region, birth date YYYYMMDD, 3-digit sequence, check digit
CN_ID_RE = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
                      r"\d{3}[0-9Xx](?![0-9A-Za-z])")
US_SSN_RE = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
PHONE_RES = [
    # Chinese mobile: 1[3-9]x xxxx xxxx, optional +86 / 0086, optional space or dash grouping 3-4-4
    re.compile(r"(?<![\d+])(?:(?:\+|00)86[\s-]?)?1[3-9]\d(?:[\s-]?\d{4}){2}(?!\d)"),
    # Chinese landline: 0 + 2-3 digit area code, dash or parentheses, 7-8 digits
    re.compile(r"(?<!\d)(?:\(0\d{2,3}\)|0\d{2,3}-)\s?\d{7,8}(?!\d)"),
    # North American: (212) 555-0123, 212-555-0123, 212.555.0123, +1 212 555 0123
    re.compile(r"(?<![\d+])(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?!\d)"),
    # other international numbers written with a + country code
    re.compile(r"(?<![\d+])\+\d{1,3}(?:[\s-]?\d{2,4}){2,4}(?!\d)"),
]
_ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]


def cn_id_checksum_ok(s: str) -> bool:
    """GB 11643 check digit: weighted sum of the first 17 digits mod 11 maps to '10X98765432'."""
    total = sum(int(c) * w for c, w in zip(s[:17], _ID_WEIGHTS))
    return "10X98765432"[total % 11] == s[17].upper()


def scrub_pii(text: str) -> tuple[str, Counter]:
    """Replace personal data by placeholders; return the new text and counts per kind."""
    counts: Counter = Counter()

    def sub(pattern, placeholder, kind, s, check=None):
        def repl(m):
            if check is not None and not check(m.group(0)):
                return m.group(0)
            counts[kind] += 1
            return placeholder
        return pattern.sub(repl, s)

    text = sub(EMAIL_RE, "<EMAIL>", "email", text)
    text = sub(CN_ID_RE, "<ID>", "id_number", text, cn_id_checksum_ok)
    text = sub(US_SSN_RE, "<ID>", "id_number", text)
    for pattern in PHONE_RES:
        text = sub(pattern, "<PHONE>", "phone", text)
    return text, counts


# --- quality measures ----------------------------------------------------------------------------------

_MARKUP = set("#{}[]<>|\\/_*~^@=`")


def symbol_ratio(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    sym = sum(1 for c in chars if c in _MARKUP or unicodedata.category(c).startswith("S"))
    return sym / len(chars)


def _is_cjk(c: str) -> bool:
    o = ord(c)
    return 0x3400 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FA1F


_WORD_RE = re.compile(r"[^\W\d_]+|\d+", re.UNICODE)


def tokens_for_repetition(text: str) -> list[str]:
    """Words for Latin-script text, single characters for CJK."""
    out: list[str] = []
    for w in _WORD_RE.findall(text.lower()):
        if any(_is_cjk(c) for c in w):
            out.extend(w)
        else:
            out.append(w)
    return out


def dup_ngram_fraction(text: str, n: int = 5) -> float:
    """Share of token n-grams that already occurred earlier in the same text."""
    toks = tokens_for_repetition(text)
    if len(toks) < n + 1:
        return 0.0
    seen: set = set()
    dup = 0
    total = len(toks) - n + 1
    for i in range(total):
        g = tuple(toks[i:i + n])
        if g in seen:
            dup += 1
        else:
            seen.add(g)
    return dup / total


def dup_line_char_fraction(text: str) -> float:
    """Share of characters that sit in lines repeating an earlier line (Gopher-style)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    total = sum(len(ln) for ln in lines)
    if not total:
        return 0.0
    seen: set = set()
    dup = 0
    for ln in lines:
        if ln in seen:
            dup += len(ln)
        seen.add(ln)
    return dup / total


def normalize_for_dedup(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _shingles(text: str, k: int) -> set[bytes]:
    s = normalize_for_dedup(text)
    if len(s) <= k:
        return {s.encode("utf-8")}
    return {s[i:i + k].encode("utf-8") for i in range(len(s) - k + 1)}


# --- the cleaner ---------------------------------------------------------------------------------------

@dataclass
class CleanReport:
    input_documents: int = 0
    kept_documents: int = 0
    removed: dict = field(default_factory=lambda: {"length": 0, "symbols": 0, "repetition": 0,
                                                   "exact_duplicate": 0, "near_duplicate": 0})
    pii_replaced: dict = field(default_factory=lambda: {"email": 0, "phone": 0, "id_number": 0})
    documents_with_pii: int = 0
    bad_records: list = field(default_factory=list)
    input_chars: int = 0
    kept_chars: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bad_record_count"] = len(self.bad_records)
        d["bad_records"] = [str(b) for b in self.bad_records[:100]]
        return d


class Cleaner:
    """Stateful (it remembers what it kept for deduplication); feed documents with `check`."""

    def __init__(self, cfg: CleanConfig | None = None):
        self.cfg = cfg or CleanConfig()
        self.report = CleanReport()
        self._exact: set[bytes] = set()
        self._lsh = None
        if self.cfg.dedup_near:
            from datasketch import MinHashLSH
            self._lsh = MinHashLSH(threshold=self.cfg.near_dup_threshold, num_perm=self.cfg.num_perm)
        self._n = 0

    def _minhash(self, text: str):
        from datasketch import MinHash
        m = MinHash(num_perm=self.cfg.num_perm, seed=self.cfg.seed)
        m.update_batch(list(_shingles(text, self.cfg.shingle_chars)))
        return m

    def check(self, text: str) -> tuple[str | None, str]:
        """Return (cleaned text, "kept") or (None, reason removed). Updates the report."""
        cfg, rep = self.cfg, self.report
        rep.input_documents += 1
        rep.input_chars += len(text)
        if cfg.remove_pii:
            text, counts = scrub_pii(text)
            if counts:
                rep.documents_with_pii += 1
                for k, v in counts.items():
                    rep.pii_replaced[k] += v
        n_chars = sum(1 for c in text if not c.isspace())
        if n_chars < cfg.min_chars or n_chars > cfg.max_chars:
            return self._drop("length")
        if symbol_ratio(text) > cfg.max_symbol_ratio:
            return self._drop("symbols")
        if (dup_line_char_fraction(text) > cfg.max_dup_line_char_fraction
                or dup_ngram_fraction(text) > cfg.max_dup_ngram_fraction):
            return self._drop("repetition")
        if cfg.dedup_exact:
            key = hashlib.blake2b(normalize_for_dedup(text).encode("utf-8"), digest_size=16).digest()
            if key in self._exact:
                return self._drop("exact_duplicate")
            self._exact.add(key)
        if self._lsh is not None:
            mh = self._minhash(text)
            if self._lsh.query(mh):
                return self._drop("near_duplicate")
            self._lsh.insert(str(self._n), mh)
            self._n += 1
        rep.kept_documents += 1
        rep.kept_chars += len(text)
        return text, "kept"

    def _drop(self, reason: str):
        self.report.removed[reason] += 1
        return None, reason


def clean_files(inputs: list[str | Path], out: str | Path, cfg: CleanConfig | None = None,
                report_path: str | Path | None = None, text_field: str = "text",
                progress: bool = True) -> CleanReport:
    """Read `inputs`, clean, write JSONL `{"id","text",...meta}` to `out` and the report as JSON.

    Output is written to a temporary file and renamed at the end, so an interrupted run leaves the
    previous output untouched; cleaning is streaming and single-pass, so rerunning is the resume.
    """
    from tqdm import tqdm

    from ..fetch import atomic_write_text

    cleaner = Cleaner(cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    docs = read_documents(inputs, ReadOptions(text_field=text_field), on_bad=cleaner.report.bad_records.append)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            bar = tqdm(docs, desc="clean", unit="doc", disable=not progress, file=sys.stderr)
            for doc in bar:
                text, _ = cleaner.check(doc.text)
                if text is None:
                    continue
                rec = {"id": doc.id, "text": text}
                for k, v in (doc.meta or {}).items():
                    rec.setdefault(k, v)
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                if cleaner.report.input_documents % 200 == 0:
                    bar.set_postfix(kept=cleaner.report.kept_documents)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    for bad in cleaner.report.bad_records:
        print(f"warning: skipped bad record {bad}", file=sys.stderr)
    report_path = Path(report_path) if report_path else out.with_suffix(".report.json")
    atomic_write_text(report_path, json.dumps(cleaner.report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return cleaner.report

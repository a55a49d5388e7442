"""The moderation classifier: per-category logistic heads on MiniLM sentence embeddings plus hashed
character n-grams, scoring user input and model output in English and Chinese.

Notable choices:
- Features are the all-MiniLM-L6-v2 embedding (`alignchat.embeddings`, 384 dimensions, meaning that
  survives rewording in English) concatenated with L2-normalised hashed character 1-3-grams of the
  NFKC-lowercased text (2^14 buckets). all-MiniLM-L6-v2's vocabulary knows CJK characters one by one
  but it was trained on English, so the n-grams carry most of the Chinese signal.
- One logistic head per category (OpenAI's 13). A sub-category head exists only where the training
  data has enough labelled positives (`MIN_SUB_POSITIVES`); a sub-category's score is the smaller of its
  own head's and its parent's, and one without a head scores 0 (docs/safety.md lists them).
- The heads are a small artifact, `alignchat/safety/data/heads.npz` (float16 weights, about 400 KB),
  written by `python -m alignchat.safety.train` from the registry data and the curated file (fixed
  split, fixed solver, no randomness).
- Scores are probabilities; a category is flagged at its threshold (0.5 unless the heads file says
  otherwise). `flagged` is any category flagged.
- Thread-safe: one process-wide instance (`get_classifier`), created under a lock; scoring only reads
  the encoder and the heads. Callers in the server run it in a worker thread, never on the event loop.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import CATEGORIES, PARENT, normalise

HEADS_FILE = Path(__file__).with_name("data") / "heads.npz"
HASH_FEATURES = 1 << 14
MIN_SUB_POSITIVES = 6
MAX_CHARS = 4000  # the classifier reads the first and last 2,000 characters of a longer text


def _ngrams():
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(analyzer="char_wb", ngram_range=(1, 3), n_features=HASH_FEATURES,
                             alternate_sign=False, norm="l2", lowercase=False)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS // 2] + "\n" + text[-MAX_CHARS // 2:]


class Featurizer:
    def __init__(self, embedder=None):
        self._embedder = embedder
        self._vec = _ngrams()

    @property
    def embedder(self):
        if self._embedder is None:
            from ..embeddings import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    def dense(self, texts: list[str]) -> np.ndarray:
        """The MiniLM part: [n, 384]."""
        return self.embedder.embed([_clip(t) for t in texts]).astype(np.float32)

    def combine(self, dense: np.ndarray, texts: list[str]) -> np.ndarray:
        """The MiniLM part next to the character n-grams: [n, 384 + HASH_FEATURES]."""
        grams = self._vec.transform([normalise(_clip(t)) for t in texts]).toarray().astype(np.float32)
        return np.concatenate([dense, grams], axis=1)

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.combine(self.dense(texts), texts)


@dataclass
class Moderation:
    flagged: bool
    categories: dict[str, bool]
    scores: dict[str, float]

    def top(self) -> list[str]:
        return [c for c in CATEGORIES if self.categories[c]]


class ModerationClassifier:
    def __init__(self, heads: dict[str, tuple[np.ndarray, float]], thresholds: dict[str, float],
                 featurizer: Featurizer | None = None):
        self.heads = heads                    # category -> (weights[d], bias)
        self.thresholds = thresholds
        self.featurizer = featurizer or Featurizer()
        names = [c for c in CATEGORIES if c in heads]
        self._names = names
        self._W = np.stack([heads[c][0] for c in names], axis=1).astype(np.float32)
        self._b = np.array([heads[c][1] for c in names], dtype=np.float32)

    @classmethod
    def load(cls, path: str | Path = HEADS_FILE, featurizer: Featurizer | None = None) -> "ModerationClassifier":
        z = np.load(path, allow_pickle=False)
        names = [str(n) for n in z["names"]]
        W, b = z["W"].astype(np.float32), z["b"].astype(np.float32)
        th = z["thresholds"].astype(np.float32)
        heads = {n: (W[:, i], float(b[i])) for i, n in enumerate(names)}
        return cls(heads, {n: float(th[i]) for i, n in enumerate(names)}, featurizer)

    def raw_scores(self, texts: list[str]) -> np.ndarray:
        """[n, 13] probabilities in CATEGORIES order (sub-category = min(own head, parent))."""
        if not texts:
            return np.zeros((0, len(CATEGORIES)), dtype=np.float32)
        return self.scores_from_features(self.featurizer(list(texts)))

    def scores_from_features(self, X: np.ndarray) -> np.ndarray:
        logits = X @ self._W + self._b
        p = 1.0 / (1.0 + np.exp(-logits))
        by = {c: p[:, i] for i, c in enumerate(self._names)}
        out = np.zeros((X.shape[0], len(CATEGORIES)), dtype=np.float32)
        for j, c in enumerate(CATEGORIES):
            if c in by:
                out[:, j] = by[c] if PARENT[c] == c else np.minimum(by[c], by.get(PARENT[c], by[c]))
        return out

    def moderate(self, texts: list[str], thresholds: dict[str, float] | None = None) -> list[Moderation]:
        """Scores and flags per text; `thresholds` (a policy's) override the heads' own per category."""
        th = {**self.thresholds, **{c: v for c, v in (thresholds or {}).items() if c in self.thresholds}}
        scores = self.raw_scores(texts)
        out = []
        for row in scores:
            sc = {c: round(float(row[j]), 6) for j, c in enumerate(CATEGORIES)}
            cats = {c: c in th and sc[c] >= th[c] for c in CATEGORIES}
            out.append(Moderation(any(cats.values()), cats, sc))
        return out


_lock = threading.Lock()
_instance: ModerationClassifier | None = None


def get_classifier() -> ModerationClassifier:
    global _instance
    with _lock:
        if _instance is None:
            _instance = ModerationClassifier.load()
        return _instance


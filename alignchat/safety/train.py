"""Trains the moderation classifier's heads and writes `alignchat/safety/data/heads.npz`.

    python -m alignchat.safety.train [--out PATH]

Notable choices:
- Reads only the training split (`alignchat.safety.data`); the held-out split is scored by
  bench/moderation.py and nothing here looks at it.
- Each head is an L2 logistic regression (scikit-learn, lbfgs, C = `C`) on the examples whose label for
  that category is known, balanced per language and class (`sample_weights`): English positives,
  English negatives, Chinese positives and Chinese negatives each carry a quarter of the weight, so the
  few Chinese positives are not outvoted by the many English examples and the Chinese prose negatives;
  inside its group a hand-written look-alike counts `LOOKALIKE_WEIGHT` times a plain example. These
  were chosen by 4-fold cross-validation on the training split only.
- Nothing is chosen by looking at held-out results: no grid, no threshold search, so the run is
  deterministic and the same data gives the same file.
- The threshold is 0.5 for every head: the balancing already centres the decision.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from ..fetch import alignchat_home
from .classifier import HEADS_FILE, MIN_SUB_POSITIVES, Featurizer
from .data import CATEGORIES, PARENT, load_all

C = 4.0
LOOKALIKE_WEIGHT = 4.0


def cached_features(texts: list[str], featurizer: Featurizer | None = None) -> np.ndarray:
    """`Featurizer` features of `texts`. The MiniLM embeddings (the slow part) are cached per text under
    $ALIGNCHAT_HOME/safety/minilm.npz, keyed by the text's SHA-256; the cache only saves time."""
    featurizer = featurizer or Featurizer()
    path = alignchat_home() / "safety" / "minilm.npz"
    cache: dict[str, np.ndarray] = {}
    if path.is_file():
        z = np.load(path)
        cache = dict(zip(z["keys"].tolist(), z["X"]))
    keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items())
    if missing:
        dense = featurizer.dense([t for _, t in missing])
        cache.update({k: row for (k, _), row in zip(missing, dense)})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("minilm.tmp.npz")
        np.savez(tmp, keys=np.array(list(cache)), X=np.stack(list(cache.values())).astype(np.float32))
        tmp.replace(path)
    return featurizer.combine(np.stack([cache[k] for k in keys]), texts)


def sample_weights(examples, y: np.ndarray) -> np.ndarray:
    """Weights for one head's rows: each (language, class) group present gets an equal share of the total;
    inside a group a look-alike weighs `LOOKALIKE_WEIGHT` times a plain example."""
    lang = np.array([e.lang for e in examples])
    look = np.array([e.kind == "lookalike" for e in examples])
    w = np.zeros(len(examples))
    groups = [(lang == L) & (y == v) for L in sorted(set(lang)) for v in (0, 1)]
    groups = [g for g in groups if g.any()]
    for g in groups:
        k = np.where(look[g], LOOKALIKE_WEIGHT, 1.0)
        w[g] = k * len(examples) / (len(groups) * k.sum())
    return w


def _fit(X, y, C, weights):
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=C, max_iter=1000, solver="lbfgs")
    m.fit(X, y, sample_weight=weights)
    return m


def train(out: Path = HEADS_FILE, log=print) -> dict:
    examples = [e for e in load_all() if e.split == "train"]
    texts = [e.text for e in examples]
    log(f"featurising {len(texts)} training texts")
    X = cached_features(texts)
    names, Ws, bs, info = [], [], [], {}
    for c in CATEGORIES:
        rows = [i for i, e in enumerate(examples) if e.label(c) is not None]
        y = np.array([examples[i].label(c) for i in rows])
        pos = int(y.sum())
        if PARENT[c] != c and pos < MIN_SUB_POSITIVES:
            log(f"{c}: {pos} training positives, below {MIN_SUB_POSITIVES}: no head")
            continue
        m = _fit(X[rows], y, C, sample_weights([examples[i] for i in rows], y))
        names.append(c)
        Ws.append(m.coef_[0].astype(np.float16))
        bs.append(float(m.intercept_[0]))
        info[c] = {"n": len(rows), "positives": pos,
                   "positives_zh": int(sum(y[k] for k, i in enumerate(rows) if examples[i].lang == "zh")), "C": C}
        log(f"{c}: n={len(rows)} positives={pos}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, names=np.array(names), W=np.stack(Ws, axis=1), b=np.array(bs, dtype=np.float32),
                        thresholds=np.full(len(names), 0.5, dtype=np.float32),
                        info=np.array(json.dumps(info)))
    tmp.replace(out)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alignchat.safety.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HEADS_FILE)
    args = ap.parse_args(argv)
    train(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

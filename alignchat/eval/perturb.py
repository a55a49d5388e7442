"""Text perturbations for evaluation: meaning-preserving edits (HELM robustness), counterfactual gender swaps
(fairness) and random word replacement (the DetectGPT-style detector).

Notable choices:
- Every perturbation is seeded by its kind, the run's seed and the text, so two models see the same
  perturbed items.
- Word tables are small and explicit (English and Chinese); Chinese terms are swapped in one pass, longest
  first (父亲 before 父), so a swap is never swapped back.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

from ..errors import UserError

_SYNONYMS = {
    "big": "large", "small": "little", "quick": "fast", "begin": "start", "buy": "purchase", "help": "assist",
    "show": "display", "answer": "reply", "choose": "pick", "correct": "right", "difficult": "hard",
    "easy": "simple", "happy": "glad", "important": "significant", "increase": "raise", "often": "frequently",
    "people": "individuals", "person": "individual", "make": "create", "use": "utilize", "need": "require",
    "get": "obtain", "find": "locate", "house": "home", "car": "automobile", "child": "kid", "children": "kids",
    "mostly": "mainly", "also": "additionally", "many": "numerous", "likely": "probable", "whole": "entire",
    "fast": "rapid", "end": "finish", "try": "attempt", "say": "state", "said": "stated", "think": "believe",
    "look": "appear", "large": "big", "near": "close", "start": "begin", "true": "correct", "wrong": "incorrect",
}
_GENDER_SWAPS = {
    "he": "she", "she": "he", "him": "her", "his": "her", "her": "his", "man": "woman", "woman": "man",
    "men": "women", "women": "men", "boy": "girl", "girl": "boy", "boys": "girls", "girls": "boys",
    "father": "mother", "mother": "father", "son": "daughter", "daughter": "son", "husband": "wife",
    "wife": "husband", "brother": "sister", "sister": "brother", "king": "queen", "queen": "king",
    "mr": "ms", "ms": "mr", "male": "female", "female": "male", "gentleman": "lady", "lady": "gentleman",
    "他": "她", "她": "他", "男": "女", "女": "男", "父亲": "母亲", "母亲": "父亲", "儿子": "女儿", "女儿": "儿子",
}
_WORDS = re.compile(r"[A-Za-z]+|[\u4e00-\u9fff]")


def _swap_words(text: str, table: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        w = m.group(0)
        new = table.get(w.lower())
        if new is None:
            return w
        return new.capitalize() if w[0].isupper() else new
    out = re.sub(r"[A-Za-z]+", repl, text)
    cjk = sorted((k for k in table if "\u4e00" <= k[0] <= "\u9fff"), key=len, reverse=True)
    if cjk and any("\u4e00" <= ch <= "\u9fff" for ch in out):  # one pass, longest words first (父亲 before 父)
        out = re.sub("|".join(map(re.escape, cjk)), lambda m: table[m.group(0)], out)
    return out


def perturb(text: str, kind: str, seed: int = 0) -> str:
    """Meaning-preserving perturbations (HELM robustness): typo, case, whitespace, synonym, identity."""
    rng = random.Random(f"{kind}:{seed}:{text[:64]}")
    if kind == "identity":
        return text
    if kind == "case":
        return text.lower()
    if kind == "whitespace":
        return re.sub(r" ", lambda m: " " * rng.choice([1, 1, 2, 3]), text)
    if kind == "synonym":
        return _swap_words(text, _SYNONYMS)
    if kind == "typo":
        chars = list(text)
        for i in range(len(chars) - 1):
            if chars[i].isalpha() and chars[i + 1].isalpha() and rng.random() < 0.05:
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
        return "".join(chars)
    raise UserError(f"unknown perturbation {kind!r}; use identity, typo, case, whitespace or synonym")


def counterfactual(text: str) -> str:
    """Swap gendered terms (English and Chinese) for the fairness output-change rate."""
    return _swap_words(text, _GENDER_SWAPS)


def has_demographic_terms(text: str) -> bool:
    return any(w.lower() in _GENDER_SWAPS for w in _WORDS.findall(text))


def replace_words(text: str, rng: random.Random, vocab: Sequence[str], frac: float = 0.15) -> str:
    """DetectGPT's cheap perturbation: each word replaced, with probability `frac`, by one drawn from `vocab`."""
    words = text.split()
    for i in range(len(words)):
        if rng.random() < frac:
            words[i] = rng.choice(vocab)
    return " ".join(words)

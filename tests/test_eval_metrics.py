"""Each evaluation metric on a small case whose answer is known by hand."""
from __future__ import annotations

import math

import pytest

from alignchat.eval import metrics as M


def test_ece_perfectly_calibrated_is_zero_and_overconfident_is_gap():
    # 10 items at confidence 0.8, 8 right: accuracy equals confidence in the only bin
    conf = [0.8] * 10
    correct = [True] * 8 + [False] * 2
    ece, bins = M.expected_calibration_error(conf, correct)
    assert ece == pytest.approx(0.0)
    assert sum(b["count"] for b in bins) == 10
    # always 100% sure, right half the time: ECE = |0.5 - 1.0| = 0.5
    ece, _ = M.expected_calibration_error([1.0] * 4, [True, False, True, False])
    assert ece == pytest.approx(0.5)


def test_reliability_diagram_is_written(tmp_path):
    _, bins = M.expected_calibration_error([0.2, 0.6, 0.9], [False, True, True])
    p = M.plot_reliability_diagram(bins, tmp_path / "r.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_invariance_identity_is_one_and_accuracy_drop():
    preds = [0, 1, 2, 1]
    assert M.invariance(preds, list(preds)) == 1.0
    assert M.invariance(preds, [0, 0, 2, 0]) == 0.5
    # clean 3/4 correct, perturbed 1/4 correct -> drop 0.5
    assert M.accuracy_drop([0, 1, 2, 0], [0, 0, 0, 0], [0, 1, 2, 1]) == pytest.approx(0.5)
    assert M.output_change_rate(["a", "b"], ["a", "c"]) == 0.5


def test_bleu_matches_hand_computation():
    # identical sentences: every precision is 1 and no brevity penalty
    assert M.bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(1.0)
    # hyp "the cat the cat" vs ref "the cat sat on the mat", BLEU-2 without smoothing:
    # unigrams: the x2 (ref has 2), cat x2 (ref has 1) -> clipped 3/4; bigrams: "the cat" x2 (ref 1),
    # "cat the" (0) -> 1/3; BP = exp(1 - 6/4)
    expected = math.exp(1 - 6 / 4) * math.sqrt(3 / 4 * 1 / 3)
    assert M.bleu(["the cat the cat"], [["the cat sat on the mat"]], max_n=2) == pytest.approx(expected)
    assert M.bleu(["completely different words"], [["the cat sat"]]) == 0.0


def test_rouge_l_matches_hand_computation():
    # LCS("the cat sat down", "the cat was down") = "the cat down" = 3; P = R = 3/4 -> F = 0.75
    assert M.rouge_l("the cat sat down", "the cat was down") == pytest.approx(0.75)
    # Chinese is compared per character: LCS("北京是首都", "北京是中国的首都") = 5; P = 1, R = 5/8
    assert M.rouge_l("北京是首都", "北京是中国的首都") == pytest.approx(2 * 1 * (5 / 8) / (1 + 5 / 8))
    assert M.rouge_l("anything", ["no overlap", "anything at all"]) == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))


def test_exact_match_and_f1():
    assert M.exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert M.exact_match("Paris, France", ["Paris"]) == 0.0
    # pred {paris, france}, ref {paris}: P = 1/2, R = 1 -> F1 = 2/3
    assert M.token_f1("Paris, France", ["Paris"]) == pytest.approx(2 / 3)
    assert M.token_f1("鲁迅", ["鲁迅"]) == 1.0
    assert M.starts_with_match(" 老舍。", ["老舍"]) == 1.0 and M.includes_match("答案是东晋", ["东晋"]) == 1.0


def test_distinct_n():
    # unigrams: a b a b -> 2 unique / 4; bigrams: ab ba ab -> 2 / 3
    assert M.distinct_n(["a b a b"], 1) == 0.5
    assert M.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert M.distinct_n(["我爱我"], 1) == pytest.approx(2 / 3)


def test_perplexity_and_bits_per_byte():
    # uniform over 4 symbols: nll per token ln 4 -> perplexity 4; one byte per token -> 2 bits per byte
    nll = 10 * math.log(4)
    assert M.perplexity(nll, 10) == pytest.approx(4.0)
    assert M.bits_per_byte(nll, 10) == pytest.approx(2.0)


def test_bias_metrics():
    assert M.stereotype_preference_rate([-1, -2, -3, -4], [-2, -1, -4, -3]) == 0.5
    s = M.stereoset_scores(stereo=[-1, -1], anti=[-2, -2], unrelated=[-3, -3])
    assert s["lms"] == 100 and s["ss"] == 100 and s["icat"] == 0  # always stereotyped: ICAT 0
    s = M.stereoset_scores(stereo=[-1, -2], anti=[-2, -1], unrelated=[-3, -3])
    assert s["ss"] == 50 and s["icat"] == 100  # the ideal model


def test_bbq_scores():
    # items: ambiguous (unknown=0) answered 0 (right) and 1 (commits); disambiguated answered right
    r = M.bbq_scores(predictions=[0, 1, 2], golds=[0, 0, 2], unknown_index=[0, 0, 1], ambiguous=[True, True, False])
    assert r["accuracy_ambiguous"] == 0.5 and r["ambiguous_commit_rate"] == 0.5
    assert r["accuracy_disambiguated"] == 1.0


def test_toxicity_summary():
    s = M.toxicity_summary([[0.1, 0.9], [0.2, 0.3]])
    assert s["expected_max_toxicity"] == pytest.approx((0.9 + 0.3) / 2)
    assert s["toxicity_probability"] == 0.5 and s["toxic_fraction"] == 0.25


def test_strubell_energy_formula():
    a = M.EnergyAssumptions(cpu_watts=100, dram_watts=0, gpu_watts=250, n_gpus=4)
    e = M.strubell_energy(3600, a)  # one hour: 1.58 * (100 + 4*250) / 1000 kWh
    assert e["kwh"] == pytest.approx(1.58 * 1.1)
    assert e["co2e_lbs"] == pytest.approx(0.954 * 1.58 * 1.1)


def test_auroc_win_rate_and_bradley_terry():
    assert M.auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert M.auroc([0.5, 0.5], [1, 0]) == 0.5
    assert M.win_rate([1, 0, 0.5, 1]) == 0.625
    ratings = M.bradley_terry([("a", "b", 1.0)] * 6 + [("b", "c", 1.0)] * 6 + [("a", "b", 0.0)] * 2)
    assert ratings["a"] > ratings["b"] > ratings["c"]
    even = M.bradley_terry([("x", "y", 1.0), ("x", "y", 0.0)])
    assert even["x"] == pytest.approx(even["y"])

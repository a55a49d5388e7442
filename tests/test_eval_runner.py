"""End to end: suites on the tiny checkpoint through the model-client layer, resume, the report card, the
`alignchat eval` CLI, scorer registration, pairwise comparison, and a real OpenAI-compatible HTTP endpoint
(`alignchat serve`), through the API and the CLI's shared model flags."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from alignchat.client import GREEDY, make_client
from alignchat.errors import UserError
from alignchat.eval import judges as J
from alignchat.eval import perturb as P
from alignchat.eval import scorers as S
from alignchat.eval.config import LOCAL_OPTIONS, EvalConfig
from alignchat.eval.runner import evaluate_task, run_suite

from conftest import ROOT


@pytest.fixture(scope="module")
def backend(tiny_ckpt):
    return make_client(model=str(tiny_ckpt), device="cpu", **LOCAL_OPTIONS)


def test_tiny_suite_end_to_end_resume_and_report(backend, tmp_path):
    cfg = EvalConfig(suite="tiny", limit=3, perturbations=["identity", "typo"], robustness_tasks=["piqa"],
                       fairness_tasks=["bbq"])
    out = tmp_path / "run"
    s = run_suite(backend, cfg, out, progress=False)
    t = s["tasks"]
    for name in ("mmlu", "boolq", "bbq", "crows_pairs", "stereoset", "truthfulqa", "zh_homonym", "heldout_text",
                 "@robustness", "@fairness", "@efficiency"):
        assert name in t, name
    mm = t["mmlu"]["summary"]
    assert mm["n"] == 3 and 0 <= mm["accuracy"] <= 1 and 0 <= mm["ece"] <= 1
    assert t["@robustness"]["summary"]["piqa/identity"]["invariance"] == 1.0  # identity changes nothing
    assert 0 <= t["@robustness"]["summary"]["piqa/typo"]["invariance"] <= 1
    assert t["heldout_text"]["summary"]["bits_per_byte_en"] > 0
    assert t["@efficiency"]["summary"]["decode_tokens_per_second"] > 0
    assert s["energy"]["kwh"] > 0 and s["energy"]["assumptions"]["pue"] == 1.58
    assert len((out / "metrics.jsonl").read_text().splitlines()) == len(t)
    # per-item records are kept, so a run can be audited and judged pairwise later
    rec = json.loads((out / "tasks" / "truthfulqa.json").read_text())
    assert len(rec["records"]) == 3 and "output" in rec["records"][0]

    # resume: a second run with the same settings recomputes only the efficiency probe
    before = {p.name: p.stat().st_mtime_ns for p in (out / "tasks").glob("*.json")}
    run_suite(backend, cfg, out, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "tasks").glob("*.json")}
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {"efficiency.json"}

    from alignchat.eval.report import write_report
    md = write_report([out, out], tmp_path / "report")
    text = md.read_text()
    for section in ("Accuracy", "Calibration", "Robustness", "Fairness", "Bias", "Toxicity", "Efficiency"):
        assert section in text
    for png in ("accuracy.png", "calibration_0.png", "robustness.png", "bias.png", "efficiency.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"


def test_modes_kshot_cot_code_toxicity_detect(backend):
    from alignchat.eval.tasks import load_task
    exs = load_task("openbookqa", 2)
    pool = load_task("openbookqa", 10, seed=9)
    recs = S.score_mc(backend, exs, k_shot=2, pool=pool)
    assert all(len(r["logprobs"]) == len(e.choices) for r, e in zip(recs, exs))
    assert S.mc_context(exs[0], pool[:2]).count("Question:") == 3
    cot = S.score_cot(backend, exs, max_tokens=8)
    assert all(0 <= r["pred"] < len(e.choices) for r, e in zip(cot, exs))
    code = S.score_code(backend, load_task("humaneval", 1), max_tokens=16)
    assert code[0]["status"] in ("failed", "timeout", "passed")
    tox = S.score_toxicity(backend, load_task("toxicity", 2), k=2, max_tokens=6)
    assert all(len(r["toxicity"]) == 2 and all(0 <= x <= 1 for x in r["toxicity"]) for r in tox)
    texts = [e.prompt for e in load_task("heldout_text") if e.meta["language"] == "en"][:6]
    det = S.detectgpt(backend, texts, n_perturb=2, words=30)
    assert 0 <= det["auroc"] <= 1 and det["n_human"] == 3


def test_shared_context_scoring_equals_full_sequence_scoring(backend):
    """Engine.loglikelihood_choices (context run once, continuations batched on its KV cache) gives the same
    log-probabilities and greedy flags as scoring every (context, continuation) pair from scratch, for
    ragged contexts and answers, a one-token context and a context that must be cut to fit."""
    eng, tok = backend.engine, backend.tokenizer
    long_ctx = tok.encode("word " * (eng.max_seq_len + 20))
    items = [(tok.encode("Question: Where is Paris?\nAnswer:"), [tok.encode(" France", add_bos=False),
                                                               tok.encode(" in the south of Spain", add_bos=False)]),
             (tok.encode("北京是"), [tok.encode("中国的首都", add_bos=False), tok.encode("a", add_bos=False),
                                    tok.encode("一种水果", add_bos=False)]),
             (tok.encode("A")[:1], [tok.encode(" b c d", add_bos=False)]),
             (long_ctx, [tok.encode(" end", add_bos=False), tok.encode(" stop here", add_bos=False)])]
    shared = eng.loglikelihood_choices(items, token_budget=64)  # a small budget forces several groups
    for (ctx, conts), row in zip(items, shared):
        # an over-long context keeps its rightmost tokens so that the longest continuation fits
        ctx = ctx[-(eng.max_seq_len - max(len(c) for c in conts)):]
        ref = eng.loglikelihood([(ctx, c) for c in conts])
        assert len(row) == len(conts)
        for (lp, greedy), (lp_ref, greedy_ref) in zip(row, ref):
            assert abs(lp - lp_ref) < 1e-3 and greedy == greedy_ref and lp < 0
    # the backend memoises by text, so a repeated item costs nothing and returns the same numbers
    before = backend.usage.scored_tokens
    a = backend.loglikelihood_choices([("Is it?", [" yes", " no"])])
    b = backend.loglikelihood_choices([("Is it?", [" yes", " no"])])
    assert a == b and backend.usage.scored_tokens > before
    after_first = backend.usage.scored_tokens
    backend.loglikelihood_choices([("Is it?", [" yes", " no"])])
    assert backend.usage.scored_tokens == after_first


def test_perturbations_and_counterfactuals():
    s = "The man said he would help his daughter."
    assert P.perturb(s, "identity") == s
    assert P.perturb(s, "case") == s.lower()
    assert P.perturb(s, "whitespace").split() == s.split()
    assert "assist" in P.perturb(s, "synonym")
    assert P.counterfactual(s) == "The woman said she would help her son."
    assert P.counterfactual("他是我的父亲") == "她是我的母亲"
    assert P.has_demographic_terms(s) and not P.has_demographic_terms("The sky is blue.")
    with pytest.raises(UserError):
        P.perturb(s, "nonsense")


def test_pairwise_win_rate_both_orders_and_elo(backend, tiny_ckpt, tmp_path):
    cfg = EvalConfig(tasks=["zh_homonym"], limit=2)
    run_suite(backend, cfg, tmp_path / "a", progress=False)
    run_suite(backend, cfg, tmp_path / "b", progress=False)
    res = J.pairwise_win_rate(tmp_path / "a", tmp_path / "b", J.AIJudge(backend))
    # identical runs: whatever the judge's position bias, judging both orders gives exactly 0.5
    assert res["n"] == 2 and res["win_rate_a"] == 0.5
    # the same through the CLI, with the judge chosen by the shared (prefixed) model flags
    cmd = [sys.executable, "-m", "alignchat.cli", "eval", "winrate", str(tmp_path / "a"), str(tmp_path / "b")]
    p = subprocess.run(cmd + ["--judge-model", str(tiny_ckpt), "--device", "cpu", "--out", str(tmp_path / "w.json")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "w.json").read_text())["win_rate_a"] == 0.5
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "choose one judge" in p.stderr
    comp = tmp_path / "compare.jsonl"
    rows = [{"id": str(i), "prompt": [{"role": "user", "content": "hi"}], "responses": ["x", "y"], "ranking": [0, 1],
             "criteria": ["helpful"], "labeller": "human:t", "source": "ui", "created": "2025-01-01T00:00:00",
             "meta": {"models": ["sft", "base"] if i % 4 else ["base", "sft"]}} for i in range(8)]
    comp.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elo = J.elo_from_comparisons(comp)
    assert elo["ratings"]["sft"] > elo["ratings"]["base"] and elo["n_pairs"] == 8


def test_cli_run_report_and_bad_input(tiny_ckpt, tmp_path):
    out = tmp_path / "cli_run"
    cmd = [sys.executable, "-m", "alignchat.cli", "eval", "run", "--model", str(tiny_ckpt), "--tasks",
           "boolq,crows_pairs,@efficiency", "--limit", "2", "--out", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "results.json").read_text())
    assert set(res["tasks"]) == {"boolq", "crows_pairs", "@efficiency"}
    assert (out / "report.md").exists()
    p = subprocess.run([sys.executable, "-m", "alignchat.cli", "eval", "report", str(tmp_path / "missing")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "results.json" in p.stderr
    p = subprocess.run([sys.executable, "-m", "alignchat.cli", "eval", "run", "--model", str(tiny_ckpt), "--tasks",
                        "nope", "--out", str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "unknown task" in p.stderr


def test_openai_compatible_endpoint_backend(backend, tiny_ckpt, tmp_path):
    """A real `alignchat serve`: chat and raw generation, legacy echo + logprobs on /v1/completions, and
    multiple choice scored over HTTP giving the same log-likelihoods as the engine in-process."""
    import httpx
    from serve_support import ServerProcess
    srv = ServerProcess(tiny_ckpt, tmp_path / "eval.db", "--max-batch", "2").wait_ready()
    try:
        b = make_client(endpoint=srv.url, endpoint_model="tiny")
        gen = b.generate([[{"role": "user", "content": "你好"}], "The capital of France is"], GREEDY.but(max_tokens=5))
        assert len(gen) == 2 and all(isinstance(g.text, str) for g in gen) and gen[0].completion_tokens >= 1

        prompt = "The cat sat on the mat"
        ids = backend.tokenizer.encode(prompt)
        r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 0,
                                                          "echo": True, "logprobs": 2}, timeout=60).json()
        lp = r["choices"][0]["logprobs"]
        assert r["choices"][0]["text"] == backend.tokenizer.decode(ids)
        assert len(lp["tokens"]) == len(ids) and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert "".join(lp["tokens"]) == r["choices"][0]["text"]
        assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
        assert all(v <= 0 for v in lp["token_logprobs"][1:]) and all(len(t) <= 2 for t in lp["top_logprobs"][1:])
        # the prompt's total log-probability equals the engine's own scoring of the same tokens
        ref = backend.engine.loglikelihood([(ids[:1], ids[1:])])[0][0]
        assert abs(sum(lp["token_logprobs"][1:]) - ref) < 1e-3
        # generated tokens get logprobs too, after the echoed prompt; without echo only theirs
        g = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 3,
                                                          "temperature": 0, "logprobs": 1}, timeout=60).json()["choices"][0]
        assert 1 <= len(g["logprobs"]["tokens"]) <= 3 and "".join(g["logprobs"]["tokens"]) == g["text"]
        assert all(max(t, key=t.get) == tok for t, tok in zip(g["logprobs"]["top_logprobs"], g["logprobs"]["tokens"]))
        bad = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 0},
                         timeout=60)
        assert bad.status_code == 400 and "echo" in bad.json()["error"]["message"]

        assert b.supports_loglikelihood
        # (a text API tokenizes context + continuation together, so answers start with a space to keep the
        # token boundary where the engine backend puts it)
        items = [("Question: Is the sky blue?\nAnswer:", [" yes", " no"]), ("The capital of China is", [" Beijing", " 北京"])]
        over_http = b.loglikelihood_choices(items)
        local = backend.loglikelihood_choices(items)
        for row_h, row_l in zip(over_http, local):
            for (lh, _, nh), (ll, _, nl) in zip(row_h, row_l):
                assert nh == nl and abs(lh - ll) < 1e-3
        cfg = EvalConfig(tasks=["zh_homonym", "boolq"], limit=2)
        s = run_suite(b, cfg, tmp_path / "http_run", progress=False)
        assert s["tasks"]["zh_homonym"]["summary"]["n"] == 2 and s["tasks"]["boolq"]["summary"]["n"] == 2
        assert s["model"] == {"backend": "openai", "model": "tiny", "base_url": srv.url + "/v1"}
        # the CLI with the shared flags: the endpoint's model name comes from its /v1/models
        out = tmp_path / "cli_http"
        p = subprocess.run([sys.executable, "-m", "alignchat.cli", "eval", "run", "--endpoint", srv.url, "--tasks",
                            "zh_homonym,crows_pairs", "--limit", "2", "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        res = json.loads((out / "results.json").read_text())
        assert res["model"]["model"] == "tiny" and res["tasks"]["crows_pairs"]["summary"]["n"] == 2
    finally:
        srv.stop()


def test_each_task_spec_names_a_registered_scorer(backend, monkeypatch):
    """evaluate_task dispatches on the scorer a spec names: a new task needs a spec and a registered scorer,
    and no change to the runner."""
    from alignchat.eval.tasks import TASKS, Example, TaskSpec
    assert all(spec.scoring in S.SCORERS for spec in TASKS.values())
    items = [Example(f"len-{i}", "shortest", "mc", "Pick one", choices=["a b c d e f", "a"], gold=1) for i in range(3)]

    @S.scorer("shortest_answer", needs_loglikelihood=True)
    def shortest(client, spec, examples, pool, cfg):
        recs = S.score_mc(client, examples)
        return recs, {"n": len(recs), "accuracy": sum(r["correct"] for r in recs) / len(recs)}

    monkeypatch.setitem(TASKS, "shortest", TaskSpec("shortest", "mc", "accuracy", "en", lambda: items,
                                                    scoring="shortest_answer"))
    try:
        res = evaluate_task(backend, "shortest", EvalConfig(limit=None))
    finally:
        del S.SCORERS["shortest_answer"]
    assert res["scoring"] == "shortest_answer" and res["summary"]["n"] == 3 and len(res["records"]) == 3
    # a random model still prefers a one-token answer over a six-word one
    assert res["summary"]["accuracy"] == 1.0
    with pytest.raises(UserError):
        evaluate_task(backend, "no_such_task", EvalConfig())

"""Alignment end to end: comparison data and feedback loop, then compare → rm → dpo → ppo through the CLI.

The default tests run every stage at tiny scale on the test suite's random tiny checkpoint. The slow test is
the documented run (bench/align_property.py): a measurable preference that RM, PPO and DPO must learn.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignchat.cli import main as cli
from alignchat.data import comparisons as C
from alignchat.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def write_lines(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def user(text):
    return [{"role": "user", "content": text}]


# --- schema and feedback ---------------------------------------------------------------------------------

def test_comparison_schema_round_trip_and_errors_name_file_and_line(tmp_path):
    good = C.Comparison(prompt=user("你好"), responses=["你好！", "hi", "…"], ranking=[2, 0, 1],
                        labeller="human:alice", source="ui")
    path = tmp_path / "c.jsonl"
    C.write_comparisons(path, [good])
    back = C.read_comparisons(path)[0]
    assert back.to_dict() == good.to_dict()
    assert back.pairs() == [(2, 0), (2, 1), (0, 1)]

    bad_rows = [
        ({"prompt": user("q"), "responses": ["a", "b"], "ranking": [0, 0]}, "permutation"),
        ({"prompt": user("q"), "responses": ["a"] * 10, "ranking": list(range(10))}, "K must be"),
        ({"prompt": user("q"), "responses": ["a"], "ranking": [0]}, "rating"),
        ({"prompt": [{"role": "assistant", "content": "x"}], "responses": ["a", "b"], "ranking": [0, 1]}, "user message"),
        ({"prompt": user("q"), "responses": ["a", "b"], "ranking": [0, 1], "labeller": "bob"}, "labeller"),
    ]
    for row, needle in bad_rows:
        p = write_lines(tmp_path / "bad.jsonl", [good.to_dict(), row])
        with pytest.raises(UserError, match=needle) as e:
            C.read_comparisons(p)
        assert f"{p}:2" in str(e.value)
    p = write_lines(tmp_path / "broken.jsonl", [good.to_dict(), "{not json"])
    with pytest.raises(UserError, match=r"broken.jsonl:2: not valid JSON"):
        C.read_comparisons(p)


def test_chat_feedback_becomes_sft_and_comparisons_without_hand_conversion(tmp_path):
    conv = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "天空为什么是蓝色的？"}]
    events = [
        {"type": "thumbs", "conversation": conv, "response": "因为瑞利散射。", "rating": 1, "user": "li"},
        {"type": "thumbs", "conversation": conv, "response": "不知道。", "rating": -1, "user": "li"},
        {"type": "choice", "conversation": user("2+2?"), "responses": ["5", "4", "22"], "chosen": 1, "user": "bo"},
        {"type": "ranking", "conversation": user("Name a colour."), "responses": ["blue", "a", "Blue is one."],
         "ranking": [2, 0, 1], "user": "bo"},
        {"type": "edit", "conversation": user("Fix: teh cat"), "original": "teh cat", "edited": "the cat"},
        {"type": "demonstration", "messages": user("Hi") + [{"role": "assistant", "content": "Hello! How can I help?"}]},
        C.Comparison(prompt=user("ui ranking"), responses=["x", "y"], ranking=[1, 0], labeller="human:ui").to_dict(),
    ]
    sft, comps = C.feedback_to_records(write_lines(tmp_path / "fb.jsonl", events))
    sft_answers = {r["messages"][-1]["content"] for r in sft}
    assert sft_answers == {"因为瑞利散射。", "4", "Blue is one.", "the cat", "Hello! How can I help?"}
    for r in sft:
        C.validate_sft_record(r, "sft")
    trainable = [c for c in comps if len(c.responses) >= 2]
    winners_losers = {(c.responses[c.ranking[0]], c.responses[c.ranking[-1]]) for c in trainable}
    assert ("4", "5") in winners_losers and ("4", "22") in winners_losers  # a choice among 3 = 2 pairs
    assert ("Blue is one.", "a") in winners_losers
    assert ("the cat", "teh cat") in winners_losers
    assert ("因为瑞利散射。", "不知道。") in winners_losers  # up- and down-rated answers paired
    assert ("y", "x") in winners_losers
    assert sum(1 for c in comps if c.rating is not None) == 2
    assert all(c.labeller.startswith("human:") for c in comps)

    # through the CLI: files that `rm` and `sft` read directly
    rc = cli(["compare", "import-feedback", "--input", str(tmp_path / "fb.jsonl"), "--sft-out",
              str(tmp_path / "sft.jsonl"), "--comparisons-out", str(tmp_path / "cmp.jsonl")])
    assert rc == 0
    assert len(C.read_sft(tmp_path / "sft.jsonl")) == len(sft)
    assert len(C.read_comparisons(tmp_path / "cmp.jsonl", min_responses=2)) == len(trainable)
    # the server's own export (thumbs as K=1 comparisons) trains rm/dpo as it is: up/down thumbs get paired
    thumbs_only = tmp_path / "thumbs.jsonl"
    C.write_comparisons(thumbs_only, [c for c in comps if c.rating is not None])
    paired = C.read_training_comparisons([thumbs_only])
    assert [(p.responses[p.ranking[0]], p.responses[p.ranking[1]]) for p in paired] == [("因为瑞利散射。", "不知道。")]
    assert len(C.read_training_comparisons([tmp_path / "cmp.jsonl"])) == len(trainable)
    bad = write_lines(tmp_path / "badfb.jsonl", [events[0], {"type": "choice", "conversation": user("q"),
                                                             "responses": ["a"], "chosen": 3}])
    with pytest.raises(UserError, match=r"badfb.jsonl:2"):
        C.feedback_to_records(bad)


def test_hhh_dialogue_parsing():
    text = "I need help.\n\nAssistant:  Sure, with what?\n\nHuman:  My cat is sad."
    assert C.hhh_dialogue(text) == [{"role": "user", "content": "I need help."},
                                    {"role": "assistant", "content": "Sure, with what?"},
                                    {"role": "user", "content": "My cat is sad."}]


@pytest.mark.slow
def test_hhh_alignment_import_from_bigbench_sdist(tmp_path):
    comps = C.load_hhh()  # fetches the 358 MB sdist once, then reads the verified cache
    assert len(comps) == 221
    assert {c.meta["subset"] for c in comps} == set(C.HHH_SUBSETS)
    assert all(len(c.responses) == 2 and c.prompt[-1]["role"] == "user" for c in comps)
    assert cli(["compare", "import-hhh", "--out", str(tmp_path / "hhh.jsonl")]) == 0
    assert len(C.read_comparisons(tmp_path / "hhh.jsonl")) == 221


# --- the stages through the CLI ----------------------------------------------------------------------------

def test_compare_rm_dpo_ppo_pipeline(tiny_ckpt, tmp_path):
    from alignchat.checkpoint import load_extra_tensors
    from alignchat.hub import load_model
    from alignchat.train.compare import ModelJudge
    from alignchat.hub import load_scored_model

    rm_prompts = write_lines(tmp_path / "rm_prompts.jsonl",
                             [{"prompt": user(f"Tell me about item {i}.")} for i in range(8)])
    ppo_prompts = write_lines(tmp_path / "ppo_prompts.jsonl",
                              [{"prompt": user(f"请描述第{i}个东西。")} for i in range(6)] +
                              [{"prompt": user("Tell me about item 0.")}])  # used by the RM: must be dropped
    sampled, ranked, pairs = tmp_path / "sampled.jsonl", tmp_path / "ranked.jsonl", tmp_path / "pairs.jsonl"

    assert cli(["compare", "sample", "--model", str(tiny_ckpt), "--prompts", str(rm_prompts), "--out", str(sampled),
                "-k", "3", "--max-tokens", "8", "--quiet"]) == 0
    recs = C.read_comparisons(sampled)
    assert len(recs) == 8 and all(len(r.responses) == 3 for r in recs)
    # resumable: a second run samples nothing new
    assert cli(["compare", "sample", "--model", str(tiny_ckpt), "--prompts", str(rm_prompts), "--out", str(sampled),
                "-k", "3", "--max-tokens", "8", "--quiet"]) == 0
    assert len(C.read_comparisons(sampled)) == 8

    assert cli(["compare", "judge", "--input", str(sampled), "--out", str(ranked), "--judge-rule", "[aeiou]",
                "--quiet"]) == 0
    for c in C.read_comparisons(ranked):
        counts = [sum(ch in "aeiou" for ch in r) for r in c.responses]
        assert [counts[i] for i in c.ranking] == sorted(counts, reverse=True)
        assert len(set(counts)) == len(counts)  # ties were dropped: every pair is a real preference
        assert c.labeller == "ai:rule:[aeiou]" and "harmless" in c.criteria

    judge = ModelJudge(str(tiny_ckpt))
    scores = judge.scores(recs[0].prompt, recs[0].responses)
    order = judge.rank(recs[0].prompt, recs[0].responses)
    assert sorted(order) == [0, 1, 2] and [scores[i] for i in order] == sorted(scores, reverse=True)

    assert cli(["compare", "synth-marker", "--input", str(sampled), "--out", str(pairs), "--marker", "!"]) == 0
    pair_recs = C.read_comparisons(pairs)
    assert all("!" in c.responses[c.ranking[0]] and "!" not in c.responses[c.ranking[1]] for c in pair_recs)

    rm_dir = tmp_path / "rm"
    assert cli(["rm", "--model", str(tiny_ckpt), "--data", str(pairs), "--out", str(rm_dir), "--max-steps", "4",
                "--lr", "1e-3", "--held-out", "0.25", "--hhh", "no", "--rankings-per-batch", "4",
                "warmup_steps=1", "eval_every=2", "save_every=2", "progress=false"]) == 0
    meta = json.loads((rm_dir / "final/meta.json").read_text())
    assert meta["stage"] == "reward" and meta["reward_norm"]["std"] > 0
    assert 0.0 <= meta["eval"]["held_out"]["pair_accuracy"] <= 1.0 and meta["eval"]["held_out"]["pairs"] > 0
    assert set(load_extra_tensors(rm_dir / "final", "score_head.")) == {"proj.weight", "proj.bias"}
    rm, rm_tok, _ = load_scored_model(str(rm_dir / "final"))
    lm, _, _ = load_model(rm_dir / "final")  # the LM part loads anywhere as a plain model
    assert lm.cfg.vocab_size == rm_tok.vocab_size
    lines = [json.loads(l) for l in (rm_dir / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "loss" in l] == [1, 2, 3, 4] and any("val_loss" in l for l in lines)

    dpo_dir = tmp_path / "dpo"
    assert cli(["dpo", "--model", str(tiny_ckpt), "--data", str(pairs), "--out", str(dpo_dir), "--max-steps", "3",
                "--lr", "1e-3", "--beta", "0.1", "--rankings-per-batch", "4",
                "warmup_steps=1", "eval_every=3", "save_every=3", "progress=false"]) == 0
    dpo_lines = [json.loads(l) for l in (dpo_dir / "metrics.jsonl").read_text().splitlines()]
    # the first DPO step starts at the reference: implicit rewards are exactly 0 and the loss is log 2
    assert dpo_lines[0]["loss"] == pytest.approx(0.693147, abs=1e-4)
    assert json.loads((dpo_dir / "final/meta.json").read_text())["stage"] == "dpo"

    ppo_dir = tmp_path / "ppo"
    ptx = tmp_path / "ptx.txt"
    ptx.write_text("The quick brown fox.\n\n北京是中国的首都。\n\nHello! How can I help you today?", encoding="utf-8")
    ppo_args = ["ppo", "--policy", str(tiny_ckpt), "--reward-model", str(rm_dir / "final"), "--prompts",
                str(ppo_prompts), "--out", str(ppo_dir), "--batch-prompts", "4", "--max-new-tokens", "8",
                "--minibatch", "2", "--ppo-epochs", "2", "--lr", "1e-3", "--critic-lr", "1e-3", "--ptx-data", str(ptx),
                "--ptx-coef", "0.5", "--property-regex", "!", "--save-every", "1", "--no-progress", "--eval-fraction",
                "0.34"]
    assert cli(ppo_args + ["--iterations", "2"]) == 0
    run_info = json.loads((ppo_dir / "run.json").read_text())
    assert run_info["dropped_prompts_seen_by_sft_or_rm"] == 1
    assert run_info["train_prompts"] + run_info["eval_prompts"] == 6
    assert cli(ppo_args + ["--iterations", "3", "--resume"]) == 0
    lines = [json.loads(l) for l in (ppo_dir / "metrics.jsonl").read_text().splitlines()]
    iters = [l for l in lines if "kl" in l]
    assert [l["step"] for l in iters] == [1, 2, 3]  # resumed at 2, not restarted
    for key in ("reward", "kl", "beta", "clip_frac", "value_loss", "entropy", "response_len", "ptx_loss",
                "property_rate"):
        assert all(key in l for l in iters), key
    assert iters[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollouts come from the reference itself
    final_meta = json.loads((ppo_dir / "final/meta.json").read_text())
    assert final_meta["stage"] == "ppo" and final_meta["step"] == 3
    samples = [json.loads(l) for l in (ppo_dir / "samples_after.jsonl").read_text().splitlines()]
    assert samples and all("response" in s and "reward" in s for s in samples)
    actor, _, _ = load_model(ppo_dir / "final")
    ref, _, _ = load_model(tiny_ckpt)
    assert any(not torch.equal(a, b) for a, b in zip(actor.state_dict().values(), ref.state_dict().values()))

    # the per-iteration trust region: with a tiny target the remaining PPO passes are skipped, without it all
    # batch_prompts / minibatch * ppo_epochs = 4 updates run
    def first_iteration(out, *extra):
        args = [a for a in ppo_args if a != "--save-every"]
        args[args.index("--out") + 1] = str(out)
        del args[args.index("1")]  # the --save-every value
        assert cli(args + ["--iterations", "1", "--lr", "0.05", *extra]) == 0
        rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        return next(r for r in rows if "kl" in r)
    free = first_iteration(tmp_path / "ppo_free")
    assert free["updates"] == 4 and free["early_stop"] is False
    capped = first_iteration(tmp_path / "ppo_capped", "--target-update-kl", "1e-9")
    assert capped["early_stop"] is True and capped["updates"] < 4


def test_ppo_help_explains_the_hyperparameters():
    out = subprocess.run([sys.executable, "-m", "alignchat.cli", "ppo", "--help"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for needle in ("β", "γ_ptx", "clip range ε", "KL(π‖π_SFT)", "K (responses ranked per prompt)", "GAE"):
        assert needle in text, needle


@pytest.mark.slow
def test_documented_run_learns_a_measurable_preference(tmp_path):
    """bench/align_property.py: RM accuracy high, PPO raises reward and marker rate within 2× KL target, DPO too."""
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(ROOT / "bench/align_property.py"), "--out", str(out), "--work",
                           str(tmp_path / "work")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["rm_held_out_pair_accuracy"] >= 0.9
    assert s["ppo_heldout_reward_after"] > s["ppo_heldout_reward_before"]
    assert s["marker_rate"]["ppo"] >= 2 * s["marker_rate"]["sft"] and s["marker_rate"]["ppo"] > 0.2
    assert s["ppo_heldout_kl_after"] <= 2 * s["kl_target"]
    assert s["marker_rate"]["dpo"] > s["marker_rate"]["sft"]


def test_compare_sample_systems_and_contrast_judge(tiny_ckpt, tmp_path):
    """RLAIF with contrasting system prompts: sampling under `--system`, then the contrast judge, whose score
    is checked against a hand computation from the model's logits."""
    from alignchat.hub import load_model
    from alignchat.train import compare as CC

    prompts = write_lines(tmp_path / "p.jsonl", [{"prompt": user("Name a colour.")}, {"prompt": user("说一个数字。")}])
    sampled, judged = tmp_path / "s.jsonl", tmp_path / "j.jsonl"
    terse = "You are terse."
    assert cli(["compare", "sample", "--model", str(tiny_ckpt), "--prompts", str(prompts), "--out", str(sampled),
                "-k", "4", "--max-tokens", "6", "--system", terse, "--system", "", "--seed", "3", "--quiet"]) == 0
    recs = C.read_comparisons(sampled)
    assert [r.meta["systems"] for r in recs] == [[terse, None, terse, None]] * 2
    assert all(m["role"] != "system" for r in recs for m in r.prompt)  # the RM sees the user's conversation only

    # the system prompt reaches the model: sampling with --system equals sampling a prompt that carries it
    p0 = recs[0].prompt
    # (a low temperature, so the random tiny model's near-uniform logits still depend on the context)
    via_option = CC.sample_responses(str(tiny_ckpt), [p0], 2, 12, 0.05, 1.0, seed=5, systems=[terse], progress=False)
    explicit = CC.sample_responses(str(tiny_ckpt), [[{"role": "system", "content": terse}] + p0], 2, 12, 0.05, 1.0,
                                   seed=5, progress=False)
    plain = CC.sample_responses(str(tiny_ckpt), [p0], 2, 12, 0.05, 1.0, seed=5, progress=False)
    assert via_option == explicit and via_option != plain

    # the contrast score by hand: per-token log p(reply | rubric persona) - log p(reply | rubric-breaking persona)
    model, tok, _ = load_model(tiny_ckpt)

    def reply_logprob(prompt, reply, system):
        r = tok.render_chat([{"role": "system", "content": system}] + prompt + [{"role": "assistant", "content": reply}])
        ids = torch.tensor([r.ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0].float(), -1)
        picked = [float(logp[t - 1, r.ids[t]]) for t in range(1, len(r.ids)) if r.assistant_mask[t]]
        return sum(picked), len(picked)

    judge = CC.ModelJudge(str(tiny_ckpt), method="contrast")
    scores = judge.scores(recs[0].prompt, recs[0].responses)
    for reply, got in zip(recs[0].responses, scores):
        good, n = reply_logprob(recs[0].prompt, reply or " ", CC.RUBRIC_PERSONA)
        bad, _ = reply_logprob(recs[0].prompt, reply or " ", CC.ANTI_RUBRIC_PERSONA)
        assert got == pytest.approx((good - bad) / n, abs=1e-4)

    assert cli(["compare", "judge", "--input", str(sampled), "--out", str(judged), "--judge-model", str(tiny_ckpt),
                "--quiet"]) == 0
    out = C.read_comparisons(judged)
    assert len(out) == 2 and all(c.labeller == f"ai:model:{tiny_ckpt}:contrast" for c in out)
    by_id = {r.id: r for r in recs}
    for c in out:
        assert c.meta["judge_scores"] == sorted(c.meta["judge_scores"], reverse=True)
        src = by_id[c.meta["sampled_id"]]
        # each response keeps the system prompt it was written under, through the reordering
        assert [src.meta["systems"][i] for i in c.meta["sampled_order"]] == c.meta["systems"]
        assert [src.responses[i] for i in c.meta["sampled_order"]] == c.responses

    assert cli(["compare", "judge", "--input", str(sampled), "--out", str(tmp_path / "y.jsonl"), "--judge-model",
                str(tiny_ckpt), "--judge-method", "yesno", "--quiet"]) == 0
    assert {c.labeller for c in C.read_comparisons(tmp_path / "y.jsonl")} == {f"ai:model:{tiny_ckpt}"}


def test_dpo_nll_weight_teaches_the_chosen_reply(tiny_ckpt, tmp_path):
    """With `nll_weight`, the first step's loss is log 2 plus α times the chosen side's per-token NLL, and
    training makes the chosen (off-policy) reply more likely in absolute terms, not only relative to the other."""
    from alignchat.hub import load_model
    from alignchat.train.dpo import response_logprobs
    from alignchat.train.reward import collate_rankings

    chosen, rejected = "I can't help with that.", "Sure, here is how."
    pairs = write_lines(tmp_path / "pairs.jsonl", [
        {"prompt": user(f"Tell me how to do harmful thing {i}."), "responses": [chosen, rejected], "ranking": [0, 1]}
        for i in range(8)])
    comps = C.read_comparisons(pairs)

    def chosen_logprob(ckpt):
        model, tok, _ = load_model(ckpt)
        model.eval()
        batch = collate_rankings(comps, tok, 64)
        with torch.no_grad():
            lp = response_logprobs(model, batch)
        return float(lp[0::2].mean())

    out = tmp_path / "dpo"
    assert cli(["dpo", "--model", str(tiny_ckpt), "--data", str(pairs), "--out", str(out), "--max-steps", "6",
                "--lr", "3e-3", "--beta", "0.1", "--rankings-per-batch", "4", "--held-out", "0", "nll_weight=1.0",
                "warmup_steps=1", "eval_every=0", "save_every=6", "progress=false"]) == 0
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert lines[0]["loss"] == pytest.approx(0.693147 + lines[0]["nll_chosen"], abs=1e-3)
    assert lines[0]["nll_chosen"] > 0
    assert json.loads((out / "final/meta.json").read_text())["nll_weight"] == 1.0
    assert chosen_logprob(out / "final") > chosen_logprob(tiny_ckpt) + 1.0

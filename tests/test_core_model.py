"""The model against Hugging Face transformers on the same weights, presets, and the KV cache."""
from __future__ import annotations

import pytest
import torch

from alignchat.config import PRESETS, ModelConfig, param_count, preset
from alignchat.model import KVCache, Transformer


def test_param_count_matches_instantiated_models():
    for cfg in [preset("tiny"), preset("tiny", qkv_bias=True), preset("tiny", tie_embeddings=True),
                preset("small"), ModelConfig(vocab_size=100, dim=48, n_layers=3, n_heads=6, n_kv_heads=2)]:
        assert param_count(cfg) == Transformer(cfg).num_params()


def test_gpt_shaped_presets():
    gpt3 = preset("gpt3-175b")
    assert (gpt3.n_layers, gpt3.n_heads, gpt3.head_dim, gpt3.dim) == (96, 96, 128, 12288)
    assert abs(param_count(gpt3) - 175e9) / 175e9 < 0.02
    gpt1 = preset("gpt1")
    assert (gpt1.n_layers, gpt1.n_heads, gpt1.dim) == (12, 12, 768)
    assert abs(param_count(preset("gpt2-124m")) - 124e6) / 124e6 < 0.02
    assert abs(param_count(preset("gpt2-1.5b")) - 1.56e9) / 1.56e9 < 0.03
    assert abs(param_count(preset("smollm2-135m")) - 134.5e6) / 134.5e6 < 0.01
    assert {"tiny", "gpt1", "gpt2-124m", "gpt2-350m", "gpt2-774m", "gpt2-1.5b", "gpt3-175b", "smollm2-135m"} <= set(PRESETS)


def _hf_model(family: str, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-5, tie_word_embeddings=False)
    if family == "qwen2":
        cfg = transformers.Qwen2Config(**common, rope_theta=1e6)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**common, rope_theta=10000.0)
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # make biases non-zero so the QKV-bias path is exercised
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()


def _write_hf_dir(model, path, tokenizer):
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save(path)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_logits_match_transformers(family, tmp_path, tiny_tokenizer):
    from alignchat.hub import load_model
    hf = _hf_model(family)
    _write_hf_dir(hf, tmp_path, tiny_tokenizer)
    ours, _, _ = load_model(tmp_path)
    assert ours.cfg.qkv_bias == (family == "qwen2")
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert (ref - got).abs().max().item() < 1e-4


def test_hf_export_loads_back_in_transformers(tmp_path, tiny_ckpt):
    transformers = pytest.importorskip("transformers")
    from alignchat.checkpoint import export_hf
    from alignchat.hub import load_model
    ours, tok, _ = load_model(tiny_ckpt)
    out = export_hf(ours, tok, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Hello! 你好，世界 123"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "你好"}]
    assert hf_tok.apply_chat_template(msgs, tokenize=False) == tok.render_chat(msgs).text
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() < 1e-4


def test_kv_cache_greedy_equals_recompute(tiny_ckpt):
    from alignchat.hub import load_model
    model, _, _ = load_model(tiny_ckpt)
    prompt = [5, 17, 42, 99, 7]
    # recompute the whole sequence at every step
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    # incremental with the cache, in slot 2 of a 3-slot cache
    cache = KVCache(model.cfg, 3, 64)
    slot = torch.tensor([2])
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), positions=torch.arange(5)[None], kv_cache=cache, slots=slot)
        cached = list(prompt)
        for i in range(20):
            nxt = int(logits[0, -1].argmax())
            cached.append(nxt)
            logits = model(torch.tensor([[nxt]]), positions=torch.tensor([[5 + i]]), kv_cache=cache, slots=slot,
                           kv_len=6 + i)
    assert cached == seq


def test_packed_documents_do_not_attend_across(tiny_ckpt):
    """A block-diagonal mask with per-document positions equals running each document alone."""
    from alignchat.hub import load_model
    model, _, _ = load_model(tiny_ckpt)
    a, b = torch.randint(0, 300, (1, 7)), torch.randint(0, 300, (1, 5))
    packed = torch.cat([a, b], 1)
    doc = torch.tensor([[0] * 7 + [1] * 5])
    causal = torch.tril(torch.ones(12, 12, dtype=torch.bool))
    mask = ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]
    pos = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        out = model(packed, positions=pos, attn_mask=mask)
        assert (out[:, :7] - model(a)).abs().max() < 1e-5
        assert (out[:, 7:] - model(b)).abs().max() < 1e-5


def test_scored_model_round_trips_its_head(tiny_ckpt, tmp_path):
    """A reward model is the LM plus a scalar head: the LM is unchanged, scores are read where asked, and
    the head survives a checkpoint round trip through `load_scored_model`; a plain LM is refused as one."""
    from alignchat.checkpoint import save_checkpoint
    from alignchat.errors import UserError
    from alignchat.hub import load_model, load_scored_model
    from alignchat.model import ScoredTransformer
    lm, tok, _ = load_model(tiny_ckpt)
    torch.manual_seed(1)
    rm = ScoredTransformer.from_lm(lm).eval()
    ids = torch.randint(0, 300, (2, 6))
    with torch.no_grad():
        assert torch.equal(rm(ids), lm(ids))  # without score arguments it is the language model
        every = rm(ids, score_all=True)
        last = rm(ids, score_index=torch.tensor([5, 2]))
    assert every.shape == (2, 6) and torch.equal(last, torch.stack([every[0, 5], every[1, 2]]))
    save_checkpoint(tmp_path / "rm", rm, tok, meta={"stage": "reward"})  # score_head.* beside the LM weights
    loaded, _, meta = load_scored_model(str(tmp_path / "rm"))
    with torch.no_grad():
        assert torch.allclose(loaded(ids, score_all=True), every) and meta["stage"] == "reward"
    with pytest.raises(UserError, match="not a reward model"):
        load_scored_model(str(tiny_ckpt))
    critic, _, _ = load_scored_model(str(tiny_ckpt), require_head=False)  # PPO's critic starts from the LM
    assert isinstance(critic, ScoredTransformer)

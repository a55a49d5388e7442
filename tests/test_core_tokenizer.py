"""Tokenizer: BPE training with chat specials, the one chat template and its assistant mask, streaming
detokenisation of Chinese, and parity with Hugging Face's tokenizer for SmolLM2."""
from __future__ import annotations

import pytest

from alignchat.tokenizer import CHAT_SPECIAL_TOKENS, StreamDecoder, train_bpe

from conftest import TINY_CORPUS


def test_trained_bpe_round_trips_and_keeps_specials_whole(tiny_tokenizer):
    for text in TINY_CORPUS[:8] + ["emoji 🤖 and 混合 text 123456"]:
        assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text
    for special in CHAT_SPECIAL_TOKENS:
        assert len(tiny_tokenizer.encode(special)) == 1
    assert tiny_tokenizer.encode("<|im_start|>user") [0] == tiny_tokenizer.token_to_id("<|im_start|>")
    # merges were learned for both scripts: fewer tokens than bytes
    for text in ["The capital of France is Paris.", "北京是中国的首都。"]:
        assert len(tiny_tokenizer.encode(text)) < len(text.encode("utf-8"))


def test_vocab_size_is_respected():
    tok = train_bpe(TINY_CORPUS, vocab_size=300, min_frequency=1)
    assert tok.vocab_size <= 300


def _masked_text(tok, r):
    return tok.decode([i for i, m in zip(r.ids, r.assistant_mask) if m], skip_special=False)


def test_render_chat_masks_exactly_the_assistant_turns(tiny_tokenizer):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "用中文说"},
            {"role": "assistant", "content": "巴黎。"}]
    r = tiny_tokenizer.render_chat(msgs)
    assert len(r.ids) == len(r.assistant_mask)
    assert _masked_text(tiny_tokenizer, r) == "Paris.<|im_end|>巴黎。<|im_end|>"
    assert tiny_tokenizer.decode(r.ids, skip_special=False) == r.text
    # the prompt used for generation is a prefix of the rendered conversation (train/serve agreement)
    prompt = tiny_tokenizer.render_chat(msgs[:2], add_generation_prompt=True)
    assert r.ids[: len(prompt.ids)] == prompt.ids
    assert sum(prompt.assistant_mask) == 0


def test_render_chat_rejects_bad_messages(tiny_tokenizer):
    from alignchat.errors import UserError
    with pytest.raises(UserError, match="role"):
        tiny_tokenizer.render_chat([{"role": "robot", "content": "x"}])
    with pytest.raises(UserError, match="content"):
        tiny_tokenizer.render_chat([{"role": "user", "content": 3}])


def test_stream_decoder_never_emits_broken_utf8(smollm2_loaded):
    _, tok, _ = smollm2_loaded
    text = "床前明月光，疑是地上霜。🤖 Emoji and 中文 mixed: 机器学习！"
    ids = tok.encode(text)
    assert len(ids) > len(text) // 2  # many characters take several byte-level tokens
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_smollm2_tokenizer_matches_hugging_face(smollm2, smollm2_loaded):
    transformers = pytest.importorskip("transformers")
    _, tok, _ = smollm2_loaded
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name)
    for text in ["Hello world! It's 2024-11-22, 3.14159.", "  leading spaces\nand\ttabs",
                 "人工智能（AI）是计算机科学的一个分支。", "def f(x):\n    return x**2  # 平方"]:
        assert tok.encode(text) == hf_tok(text, add_special_tokens=False)["input_ids"], text
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "你好"}]
    assert tok.render_chat(msgs, add_generation_prompt=True).text == hf_tok.apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=False)

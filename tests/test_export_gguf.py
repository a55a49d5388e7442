"""GGUF export: `alignchat export --format gguf` read back by the `gguf` reader and by our importer (identical
logits for f32, bounded for f16 and q8_0), the tokenizer in the file, llama.cpp's RoPE row layout, and
the architectures it refuses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignchat.errors import UserError

from conftest import make_tiny_model

MIXED = "The capital of France is Paris. 北京是中国的首都。 Hello 你好 12345!"

# the largest logit change each type may cause on the tiny model, as a share of the logits' standard deviation
# (measured: f16 0.002, q8_0 0.043)
BOUNDS = {"f32": 0.0, "f16": 1e-2, "q8_0": 1e-1}


def _export(capsys, model, out, *extra) -> None:
    from alignchat.cli import main
    rc = main(["export", str(model), "--format", "gguf", "--out", str(out), *extra])
    _, err = capsys.readouterr()
    assert rc == 0, err


def _fields(path) -> tuple[dict, dict]:
    import gguf
    reader = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return meta, {t.name: t for t in reader.tensors}


def _ids(tok) -> torch.Tensor:
    return torch.tensor([tok.encode(MIXED)])


@pytest.fixture(scope="module")
def ours(tiny_ckpt):
    from alignchat.hub import load_model
    return load_model(tiny_ckpt)


@pytest.mark.parametrize("gtype", list(BOUNDS))
def test_round_trip_through_the_gguf_reader_and_our_importer(gtype, tmp_path, tiny_ckpt, ours, capsys):
    import gguf
    from alignchat.hub import load_model

    model, tok, _ = ours
    cfg = model.cfg
    path = tmp_path / f"tiny-{gtype}.gguf"
    _export(capsys, tiny_ckpt, path, "--type", gtype)
    meta, tensors = _fields(path)

    # llama metadata as llama.cpp reads it
    assert meta["general.architecture"] == "llama"
    assert meta["general.file_type"] == {"f32": 0, "f16": 1, "q8_0": 7}[gtype]
    expected = {"llama.block_count": cfg.n_layers, "llama.embedding_length": cfg.dim,
                "llama.feed_forward_length": cfg.hidden_dim, "llama.attention.head_count": cfg.n_heads,
                "llama.attention.head_count_kv": cfg.n_kv_heads, "llama.context_length": cfg.max_seq_len,
                "llama.rope.dimension_count": cfg.head_dim, "llama.vocab_size": cfg.vocab_size}
    assert {k: meta[k] for k in expected} == expected
    assert meta["llama.rope.freq_base"] == pytest.approx(cfg.rope_theta)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps, rel=1e-6)
    # the tokenizer: byte-level BPE with llama.cpp's digits-then-GPT-2 split, control tokens, ids, template
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == cfg.vocab_size
    assert tokens[tok.token_to_id("<|im_start|>")] == "<|im_start|>"
    assert types[tok.token_to_id("<|im_end|>")] == gguf.TokenType.CONTROL
    assert types[tok.encode("Paris")[0]] == gguf.TokenType.NORMAL
    assert len(meta["tokenizer.ggml.merges"]) > 0 and all(" " in m for m in meta["tokenizer.ggml.merges"])
    assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_id
    assert meta["tokenizer.ggml.padding_token_id"] == tok.pad_id
    assert meta["tokenizer.ggml.eot_token_id"] == tok.token_to_id("<|im_end|>")
    assert meta["tokenizer.chat_template"] == tok.chat_template

    # the tensors llama.cpp expects, in the layout it expects (ggml lists the row length first)
    names = {"token_embd.weight", "output_norm.weight", "output.weight"}
    for i in range(cfg.n_layers):
        names |= {f"blk.{i}.{n}.weight" for n in ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v",
                                                    "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == names
    assert list(tensors["blk.0.attn_k.weight"].shape) == [cfg.dim, cfg.n_kv_heads * cfg.head_dim]
    assert list(tensors["token_embd.weight"].shape) == [cfg.dim, cfg.vocab_size]
    matrix_type = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[gtype]
    assert tensors["blk.1.ffn_down.weight"].tensor_type.name == matrix_type
    assert tensors["blk.1.attn_norm.weight"].tensor_type.name == "F32"  # norm gains stay f32

    # our importer loads it back: same shape, and the same logits (f32) or close ones
    back, back_tok, info = load_model(path)
    assert info["source_format"] == "gguf" and back.cfg.n_layers == cfg.n_layers
    ids = _ids(tok)
    with torch.no_grad():
        a, b = model(ids), back(ids)
    if gtype == "f32":
        assert torch.equal(a, b)
        sd, bd = model.state_dict(), back.state_dict()
        assert sd.keys() == bd.keys() and all(torch.equal(sd[k], bd[k]) for k in sd)
    else:
        spread = float(a.std())
        diff = float((a - b).abs().max())
        print(gtype, diff, spread, diff/spread)
        assert 0 < diff <= BOUNDS[gtype] * spread, (diff, spread)


def test_tokenizer_in_the_file_gives_our_token_ids(tmp_path, tiny_ckpt, ours, capsys):
    from alignchat.gguf_import import read_gguf
    from alignchat.tokenizer import Tokenizer

    _, tok, _ = ours
    path = tmp_path / "tok.gguf"
    _export(capsys, tiny_ckpt, path)
    _, meta = read_gguf(path)
    back = Tokenizer.from_gguf_fields(meta)
    assert back.encode(MIXED) == tok.encode(MIXED)
    assert len(tok.encode(MIXED)) > 10 and back.decode(back.encode(MIXED)) == MIXED
    msgs = [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": "What is 2+2? 请回答。"}]
    assert back.render_chat(msgs, add_generation_prompt=True).ids == tok.render_chat(msgs, True).ids
    assert back.eos_id == tok.eos_id and back.stop_token_ids == tok.stop_token_ids


def _interleaved_rope(x: np.ndarray, pos: int, theta: float) -> np.ndarray:
    """llama.cpp's RoPE for the llama architecture (GGML_ROPE_TYPE_NORM): rotate adjacent pairs (2i, 2i+1)
    of each head by pos·theta^(-2i/d)."""
    d = x.shape[-1]
    ang = pos * theta ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(ang), np.sin(ang)
    out = x.copy()
    out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    out[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
    return out


def test_q_and_k_rows_are_in_llama_cpp_rope_layout(tmp_path, tiny_ckpt, ours, capsys):
    """Attention scores computed the llama.cpp way (interleaved RoPE on the file's Q/K rows) equal ours
    (rotate-half RoPE on our weights): the permutation is the one llama.cpp's graph needs, not merely one
    our importer undoes."""
    import gguf
    from alignchat.model import apply_rope

    model, _, _ = ours
    cfg = model.cfg
    path = tmp_path / "rope.gguf"
    _export(capsys, tiny_ckpt, path)
    _, tensors = _fields(path)
    wq = np.asarray(gguf.quants.dequantize(tensors["blk.0.attn_q.weight"].data, gguf.GGMLQuantizationType.F32))
    wk = np.asarray(gguf.quants.dequantize(tensors["blk.0.attn_k.weight"].data, gguf.GGMLQuantizationType.F32))
    wq, wk = wq.reshape(cfg.n_heads * cfg.head_dim, cfg.dim), wk.reshape(cfg.n_kv_heads * cfg.head_dim, cfg.dim)
    x = np.random.default_rng(0).standard_normal((5, cfg.dim)).astype(np.float64)
    hd, group = cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        xt = torch.tensor(x, dtype=torch.float32)[None]
        q = attn.q_proj(xt).view(1, 5, cfg.n_heads, hd).transpose(1, 2)
        k = attn.k_proj(xt).view(1, 5, cfg.n_kv_heads, hd).transpose(1, 2)
        pos = torch.arange(5)[None]
        q, k = apply_rope(q, model.rope_cos[pos], model.rope_sin[pos]), apply_rope(k, model.rope_cos[pos],
                                                                                    model.rope_sin[pos])
        ours_scores = torch.einsum("hqd,hkd->hqk", q[0], k[0].repeat_interleave(group, 0)).double().numpy()
    qg = (x @ wq.T.astype(np.float64)).reshape(5, cfg.n_heads, hd)
    kg = (x @ wk.T.astype(np.float64)).reshape(5, cfg.n_kv_heads, hd)
    qg = np.stack([_interleaved_rope(qg[t], t, cfg.rope_theta) for t in range(5)])
    kg = np.stack([_interleaved_rope(kg[t], t, cfg.rope_theta) for t in range(5)])
    cpp_scores = np.einsum("qhd,khd->hqk", qg, np.repeat(kg, group, axis=1))
    assert np.abs(cpp_scores).max() > 0.1
    np.testing.assert_allclose(cpp_scores, ours_scores, rtol=1e-4, atol=1e-4)
    # without the permutation the scores would differ: the check can fail
    wq_plain = model.model.layers[0].self_attn.q_proj.weight.detach().double().numpy()
    q_plain = np.stack([_interleaved_rope((x @ wq_plain.T).reshape(5, cfg.n_heads, hd)[t], t, cfg.rope_theta)
                        for t in range(5)])
    wk_plain = model.model.layers[0].self_attn.k_proj.weight.detach().double().numpy()
    k_plain = np.stack([_interleaved_rope((x @ wk_plain.T).reshape(5, cfg.n_kv_heads, hd)[t], t, cfg.rope_theta)
                        for t in range(5)])
    wrong = np.einsum("qhd,khd->hqk", q_plain, np.repeat(k_plain, group, axis=1))
    assert np.abs(wrong - ours_scores).max() > 1e-2


def test_tied_embeddings_and_qwen2_export(tmp_path, tiny_tokenizer):
    from alignchat.export_gguf import export_gguf
    from alignchat.hub import load_model

    ids = torch.tensor([tiny_tokenizer.encode(MIXED)])
    tied = make_tiny_model(tiny_tokenizer.vocab_size, seed=5, tie_embeddings=True)
    export_gguf(tied, tiny_tokenizer, tmp_path / "tied.gguf")
    meta, tensors = _fields(tmp_path / "tied.gguf")
    assert "output.weight" not in tensors
    back, _, _ = load_model(tmp_path / "tied.gguf")
    assert back.cfg.tie_embeddings
    with torch.no_grad():
        assert torch.equal(tied(ids), back(ids))

    qwen = make_tiny_model(tiny_tokenizer.vocab_size, seed=6, family="qwen2", qkv_bias=True)
    with torch.no_grad():
        for layer in qwen.model.layers:
            layer.self_attn.q_proj.bias.normal_()  # non-zero biases, so a lost bias shows
    export_gguf(qwen, tiny_tokenizer, tmp_path / "qwen.gguf")
    meta, tensors = _fields(tmp_path / "qwen.gguf")
    assert meta["general.architecture"] == "qwen2" and "blk.0.attn_q.bias" in tensors
    back, _, _ = load_model(tmp_path / "qwen.gguf")
    assert back.cfg.family == "qwen2" and back.cfg.qkv_bias
    with torch.no_grad():
        assert torch.equal(qwen(ids), back(ids))


def test_unsupported_architecture_and_bad_out_are_clear_errors(tmp_path, tiny_tokenizer, tiny_ckpt, capsys):
    from alignchat.cli import main
    from alignchat.export_gguf import export_gguf

    model = make_tiny_model(tiny_tokenizer.vocab_size)
    model.cfg.family = "gemma3"
    with pytest.raises(UserError, match="gemma3"):
        export_gguf(model, tiny_tokenizer, tmp_path / "g.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written
    rc = main(["export", str(tiny_ckpt), "--format", "gguf", "--out", str(tmp_path)])
    assert rc == 2 and "is a directory" in capsys.readouterr().err

"""all-MiniLM-L6-v2 sentence embeddings: the plain-PyTorch BERT matches transformers' BertModel on the
same fetched weights, padding does not leak into the pooled vector, and similarities order sentences the
way the published model does."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignchat.embeddings import EMBEDDING_DIM, SentenceEmbedder, cosine, embed, get_embedder, mean_pool


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return get_embedder()


def test_matches_transformers_bertmodel(embedder):
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertModel.from_pretrained(str(embedder.model_dir), add_pooling_layer=False,
                                                 attn_implementation="eager").eval()
    texts = ["A man is eating food.", "Paris is the capital of France, a country in western Europe.",
             "深度学习需要大量数据。", "x"]
    ids, mask = embedder.tokenize(texts)
    with torch.inference_mode():
        ours = embedder.model(ids, mask)
        theirs = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert torch.allclose(ours[real], theirs[real], atol=2e-4), (ours[real] - theirs[real]).abs().max()
    pooled_ref = torch.nn.functional.normalize(mean_pool(theirs, mask), dim=-1).numpy()
    assert np.allclose(embedder.embed(texts), pooled_ref, atol=2e-4)


def test_padding_does_not_change_embeddings(embedder):
    short = "Short sentence."
    long = "This is a considerably longer sentence that forces the short one to be padded in its batch. " * 3
    alone = embedder.embed([short])[0]
    batched = embedder.embed([short, long])[0]
    assert np.allclose(alone, batched, atol=1e-5)


def test_unit_norm_shape_and_empty(embedder):
    v = embed(["hello world", "", "你好，世界"])
    assert v.shape == (3, EMBEDDING_DIM) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, EMBEDDING_DIM)


def test_known_similarity_orderings(embedder):
    # the model card's example: eating food ~ eating bread (0.755), far from carrying a baby
    v = embedder.embed(["A man is eating food.", "A man is eating a piece of bread.",
                        "The girl is carrying a baby.", "A man is riding a horse."])
    s = cosine(v, v)
    assert abs(s[0, 1] - 0.7553) < 0.01
    assert s[0, 1] > s[0, 3] > s[0, 2]
    q = embedder.embed(["How do plants make food from sunlight?"])
    docs = embedder.embed(["Photosynthesis converts light energy into chemical energy in chloroplasts.",
                           "The stock market fell sharply on Monday.",
                           "Volcanoes erupt when magma rises to the surface."])
    assert int(np.argmax(cosine(q, docs))) == 0


def test_truncates_long_inputs(embedder):
    very_long = "word " * 2000
    ids, mask = embedder.tokenize([very_long])
    assert ids.shape[1] == embedder.max_seq_len == 256
    assert np.isfinite(embedder.embed([very_long])).all()

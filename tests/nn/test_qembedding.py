"""QuantEmbedding: int8 rows with per-row scales, or half-precision tables."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.measure import sqnr_db
from lowbit.nn.qembedding import QuantEmbedding


@pytest.mark.parametrize(
    ("scheme", "floor"), [("W8A8-dynamic", 38), ("W8A16", 38), ("FP16", 60), ("BF16", 40)]
)
def test_lookup_matches_float_table(scheme, floor):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 24, padding_idx=0)
    ids = torch.randint(0, 50, (4, 9))
    q = QuantEmbedding.from_float(emb, lowbit.get_preset(scheme))
    assert sqnr_db(emb(ids), q(ids)) > floor
    assert q(ids).dtype == torch.float32
    if scheme.startswith("W8"):
        assert q.qweight.dtype == torch.int8 and q.weight_scale.shape == (50, 1)


def test_static_scheme_needs_no_calibration_for_embeddings():
    model = nn.Sequential(nn.Embedding(30, 8), nn.Linear(8, 4))
    ids = torch.randint(0, 30, (2, 5))
    q = lowbit.quantize(model, "W8A8", calibration=[ids])
    assert isinstance(q[0], QuantEmbedding) and type(q[1]).__name__ == "QuantLinear"
    assert not q.lowbit_record.skipped


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(30, 8), nn.Linear(8, 4))
    ids = torch.randint(0, 30, (2, 5))
    q = lowbit.quantize(model, "W8A8-dynamic")
    lowbit.save(q, tmp_path)
    loaded = lowbit.load(tmp_path, nn.Sequential(nn.Embedding(30, 8), nn.Linear(8, 4)))
    assert torch.equal(loaded(ids), q(ids))


def test_float_ids_and_max_norm_are_rejected_clearly():
    q = QuantEmbedding.from_float(nn.Embedding(10, 4), lowbit.get_preset("W8A16"))
    with pytest.raises(ValueError, match="integer ids"):
        q(torch.zeros(3))
    model = nn.Sequential(nn.Embedding(10, 4, max_norm=1.0))
    out = lowbit.quantize(model, "W8A16")
    assert isinstance(out[0], nn.Embedding)
    assert "max_norm" in out.lowbit_record.skipped["0"]

"""Latency, accuracy and table helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.measure import (
    cosine_similarity,
    format_table,
    measure_latency,
    sqnr_db,
    top1_accuracy,
)
from lowbit.measure.latency import compare_latency


def test_measure_latency_counts_runs_and_orders_percentiles():
    calls = []
    r = measure_latency(lambda: calls.append(1), warmup=2, min_runs=7, min_time_s=0.0)
    assert r.runs == 7 and len(calls) == 9
    assert 0 <= r.p10_ms <= r.median_ms <= r.p90_ms


def test_measure_latency_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_runs"):
        measure_latency(lambda: None, min_runs=0)


def test_compare_latency_interleaves_rounds():
    order = []
    r = compare_latency({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                        rounds=3, min_time_s=0.0)  # fmt: skip
    assert set(r) == {"a", "b"} and r["a"].runs == r["b"].runs == 6  # 2 timed runs per round
    # every round runs a before b: the b's of round 1 come before the a's of round 2
    firsts = [i for i, c in enumerate(order) if c == "a"]
    lasts = [i for i, c in enumerate(order) if c == "b"]
    assert lasts[0] < firsts[-1] and order[0] == "a" and order[-1] == "b"
    with pytest.raises(ValueError, match="rounds"):
        compare_latency({"a": lambda: None}, rounds=0)


def test_compare_latency_attributes_a_counter_to_each_callable():
    """A counter that advances 5 per call of a and 2 per call of b: exactly that per call."""
    state = {"n": 0.0}
    fns = {"a": lambda: state.__setitem__("n", state["n"] + 5),
           "b": lambda: state.__setitem__("n", state["n"] + 2)}  # fmt: skip
    r = compare_latency(fns, rounds=3, min_time_s=0.0, counter=lambda: state["n"])
    assert r["a"].counter_per_call == 5.0 and r["b"].counter_per_call == 2.0
    unreadable = compare_latency(fns, rounds=2, min_time_s=0.0, counter=lambda: None)
    assert unreadable["a"].counter_per_call is None
    assert compare_latency(fns, rounds=1, min_time_s=0.0)["b"].counter_per_call is None


def test_top1_accuracy_of_a_known_classifier():
    model = nn.Identity()
    logits = torch.eye(4)
    assert top1_accuracy(model, logits, torch.tensor([0, 1, 2, 0])) == 0.75


def test_top1_accuracy_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        top1_accuracy(nn.Identity(), torch.eye(3), torch.tensor([0]))


def test_cosine_similarity_is_one_for_scaled_copies_and_checks_shapes():
    a = torch.randn(5, 8)
    assert torch.allclose(cosine_similarity(a, 3 * a), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        cosine_similarity(a, a[:, :4])


def test_format_table_aligns_columns():
    text = format_table([{"a": "x", "b": 1.23456}, {"a": "long", "b": 2}], ["a", "b"])
    lines = text.splitlines()
    assert lines[0].startswith("| a ") and "1.235" in text
    assert len({len(line) for line in lines}) == 1


def test_sqnr_db_of_a_one_percent_error_is_40_db():
    y = torch.randn(100)
    assert abs(sqnr_db(y, y * 1.01) - 40.0) < 1e-4  # 1.01 is not exact in float32
    assert sqnr_db(y, y) > 250  # exact copy: noise floor clamp, no division by zero
    with pytest.raises(ValueError, match="shapes differ"):
        sqnr_db(y, y[:10])

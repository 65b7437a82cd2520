"""The demo's pieces: the embedded data set, the model, and a short end-to-end run."""

from __future__ import annotations

import pytest

from lowbit.demo import DigitsCNN, format_demo, load_digits_split, run_demo


def test_digits_split_is_offline_and_deterministic():
    a, b = load_digits_split(seed=3), load_digits_split(seed=3)
    assert a.x_train.shape[1:] == (1, 8, 8) and len(a.x_test) + len(a.x_train) == 1797
    assert (a.y_test == b.y_test).all()
    assert float(a.x_train.max()) <= 1.0


def test_demo_runs_and_w8a8_keeps_accuracy():
    rows = run_demo(schemes=("W8A8", "W8A8-dynamic"))  # the demo's own settings
    by_name = {r["variant"]: r for r in rows}
    assert set(by_name) == {"float32", "W8A8", "W8A8-dynamic"}
    assert by_name["float32"]["accuracy %"] > 95
    for name in ("W8A8", "W8A8-dynamic"):
        # the bar: int8 within 0.5 points of float32 on the held-out digits
        assert abs(by_name[name]["accuracy %"] - by_name["float32"]["accuracy %"]) <= 0.5
        assert by_name[name]["weight dtypes"] == "int8"
        assert by_name[name]["size (bytes)"] < 0.3 * by_name["float32"]["size (bytes)"]
    table = format_demo(rows)
    assert "W8A8-dynamic" in table and "accuracy %" in table


def test_model_shapes():
    import torch

    assert DigitsCNN()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.slow
def test_every_demo_scheme_keeps_accuracy_within_half_a_point():
    rows = run_demo()
    float_acc = rows[0]["accuracy %"]
    for row in rows[1:]:
        assert abs(row["accuracy %"] - float_acc) <= 0.5, row

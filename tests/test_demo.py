"""The demo's pieces: the embedded tasks, and short end-to-end runs with their accuracy bars."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.cli import main
from lowbit.demo import DEMO_SCHEMES, format_demo, run_demo, run_task
from lowbit.measure import sqnr_db, top1_accuracy
from lowbit.tasks import TASKS, train


def test_demo_runs_and_int8_keeps_digits_accuracy():
    rows = run_task("digits", schemes=("W8A8", "W8A8-dynamic", "NF4"))
    by_name = {r["variant"]: r for r in rows}
    assert list(by_name) == ["float32", "W8A8", "W8A8-dynamic", "NF4"]
    assert by_name["float32"]["accuracy %"] > 95
    for name in ("W8A8", "W8A8-dynamic"):
        # the foundation issue's bar: int8 within 0.5 points of float32 on the held-out digits
        assert abs(by_name[name]["accuracy %"] - by_name["float32"]["accuracy %"]) <= 0.5
        assert by_name[name]["weight dtypes"] == "int8"
        assert by_name[name]["size (bytes)"] < 0.3 * by_name["float32"]["size (bytes)"]
        assert 8.0 <= by_name[name]["bits/weight"] < 8.5
    nf4 = by_name["NF4"]
    assert 4.0 <= nf4["bits/weight"] <= 4.3 and nf4["accuracy %"] > 95
    left, considered = map(int, nf4["layers left float"].split(" of "))
    assert 0 < left < considered  # convs whose rows (9, 32 weights) groups of 64 miss
    assert by_name["W8A8"]["layers left float"] == f"0 of {considered}"
    assert by_name["float32"]["layers left float"] == "all"
    table = format_demo(rows)
    assert "W8A8-dynamic" in table and "bits/weight" in table


def test_mnist1d_task_trains_and_low_bit_rows_are_measured():
    rows = run_demo(tasks=("mnist1d",), schemes=("W4A16", "KMEANS16", "BINARY"), epochs=8)
    by_name = {r["variant"]: r for r in rows}
    assert by_name["float32"]["accuracy %"] > 85
    assert by_name["KMEANS16"]["bits/weight"] <= 4.1
    assert by_name["BINARY"]["bits/weight"] <= 1.1
    assert by_name["W4A16"]["accuracy %"] > 80
    # binary post-training quantization is expected to lose accuracy (QAT is a later issue)
    assert by_name["BINARY"]["accuracy %"] < by_name["float32"]["accuracy %"]


def test_summary_table_lines_tasks_up_side_by_side():
    rows = [
        {"task": t, "variant": v, "accuracy %": a, "bits/weight": b}
        for t, v, a, b in [
            ("digits", "float32", 99.0, 32.0),
            ("digits", "NF4", 98.0, 4.25),
            ("mnist1d", "float32", 96.0, 32.0),
            ("mnist1d", "NF4", 95.5, 4.25),
        ]
    ]
    text = format_demo(rows)
    assert "digits Δ pts" in text and "mnist1d Δ pts" in text
    assert "-1.00" in text and "-0.50" in text


def test_cli_demo_takes_tasks_and_schemes(capsys, tmp_path):
    out = tmp_path / "report"
    args = ["demo", "--tasks", "digits", "--schemes", "W8A16", "--epochs", "2", "--out", str(out)]
    assert main(args) == 0
    for name in ("report.md", "report.html", "report.json"):  # the demo ends with the report
        assert (out / name).stat().st_size > 1000
    out = capsys.readouterr().out
    assert "W8A16" in out and "mnist1d" not in out.split("\n", 1)[1]


def test_every_preset_is_in_the_demo():
    from lowbit import preset_names

    # the demo leaves out variants and the QAT targets (W4A4, W2A8: post-training they collapse)
    assert set(preset_names()) - set(DEMO_SCHEMES) <= {"W4A8-dynamic", "W4A4", "W2A8"}


def test_8_bit_schemes_keep_mnist1d_accuracy_end_to_end():
    """The default suite's share of the slow test below, for the task the other default tests
    leave to it: the 1-D CNN trained briefly (4 epochs, float 92.6 %), quantized with the demo's
    calibration. Measured: within 0.3 points, 99.4-99.7 % of predictions unchanged, logits at
    38.8-41.0 dB; rounding the weights down instead of to nearest gives 98 % and 20 dB (and
    *better* accuracy, so accuracy alone would not see it)."""
    task = TASKS["mnist1d"]
    split = task.load(seed=0)
    torch.manual_seed(0)
    model = train(task.make_model(), split, epochs=4, seed=0)
    float_acc = 100 * top1_accuracy(model, split.x_test, split.y_test)
    assert float_acc > 90
    with torch.no_grad():
        ref = model(split.x_test)
    calibration = list(split.x_train[:512].split(64))
    for scheme in ("W8A8", "W8A8-dynamic", "W8A16"):
        q = lowbit.quantize(model, scheme, calibration=calibration, progress=False)
        with torch.no_grad():
            out = q(split.x_test)
        acc = 100 * top1_accuracy(q, split.x_test, split.y_test)
        agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
        assert abs(acc - float_acc) <= 0.5 and agree >= 0.99, (scheme, float_acc, acc, agree)
        assert sqnr_db(ref, out) > 35, scheme


@pytest.mark.slow
def test_every_demo_scheme_at_8_bits_and_more_keeps_accuracy_within_half_a_point():
    rows = run_demo()
    floats = {r["task"]: r["accuracy %"] for r in rows if r["variant"] == "float32"}
    for row in rows:
        if row["variant"] in ("FP16", "BF16", "W8A16", "W8A8", "W8A8-dynamic"):
            assert abs(row["accuracy %"] - floats[row["task"]]) <= 0.5, row


def test_demo_variants_run_ptq_algorithms():
    rows = run_task("digits", schemes=("W3A8", "W3A8+cle+bias_correction", "W4A16+gptq"))
    by_name = {r["variant"]: r for r in rows}
    assert set(by_name) == {"float32", "W3A8", "W3A8+cle+bias_correction", "W4A16+gptq"}
    assert by_name["W4A16+gptq"]["accuracy %"] > 95
    assert "W3A8+adaround" in DEMO_SCHEMES and "W4A8+cle+bias_correction" in DEMO_SCHEMES


def test_auto_chooses_on_validation_data_the_test_set_never_sees(monkeypatch):
    """The auto row chose on half of the test set it was reported on (issue 18)."""
    import torch

    import lowbit
    from lowbit.tasks import TASKS

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(len(x), 10)

    def fake_auto(model, calibration, evaluate, **kwargs):
        evaluate(Spy())
        return type("R", (), {"model": model, "chosen": type("C", (), {"name": "x"}),
                              "config": None})()  # fmt: skip

    monkeypatch.setattr(lowbit, "auto", fake_auto)
    run_task("digits", schemes=("auto",), epochs=1)
    test_rows = {tuple(r.flatten().tolist()) for r in TASKS["digits"].load(seed=0).x_test}
    (x_val,) = seen
    assert len(x_val) == 200
    assert not {tuple(r.flatten().tolist()) for r in x_val} & test_rows

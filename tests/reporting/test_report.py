"""lowbit.report: the numbers are consistent with the files and with each other."""

import json
import re

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import ConfigError
from lowbit.measure import layer_weight_bytes


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    x = torch.randn(256, 64)
    labels = model(x).argmax(1)
    evaluate = lambda m: float((m(x).argmax(1) == labels).float().mean())  # noqa: E731
    train = [(x[i : i + 64], labels[i : i + 64]) for i in range(0, 256, 64)]
    rep = lowbit.report(model, calibration=[x[:64], x[64:128]], evaluate=evaluate,
                        schemes=["FP16", "W8A8", "W4A16", "NF4", "W4A8", "W4A8+gptq"],
                        train=train, qat_epochs=1, min_time_s=0.05, progress=False)  # fmt: skip
    return model, x, rep


def _table(rep, title):
    return next(t for t in rep.tables() if t[0].startswith(title))


def test_sizes_come_from_the_saved_files(setup):
    model, x, rep = setup
    assert rep.float_row["size_bytes"] == lowbit.model_size(model)
    q = lowbit.quantize(model, "W4A16")
    assert rep.row("W4A16")["size_bytes"] == lowbit.model_size(q)
    _title, _cols, rows, _note = _table(rep, "Size and compression")
    by = {r["variant"]: r for r in rows}
    expected = rep.float_row["size_bytes"] / rep.row("W4A16")["size_bytes"]
    assert by["W4A16"]["compression"] == f"{expected:.2f}x"


def test_every_variant_is_timed_in_one_interleaved_run(monkeypatch):
    """The report timed float once, then each variant in turn (issue 18): one compare_latency
    per batch size now takes float32 and every variant, the QAT row included."""
    from lowbit.measure import LatencyResult
    from lowbit.reporting import build

    calls = []

    def fake(fns, *, min_time_s, counter=None):
        calls.append(list(fns))
        for fn in fns.values():
            fn()  # each callable really runs its model on the batch
        return {n: LatencyResult(float(i + 1), 0.0, 0.0, 1, None) for i, n in enumerate(fns)}

    monkeypatch.setattr(build, "compare_latency", fake)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8)).eval()
    x = torch.randn(32, 16)
    rep = lowbit.report(model, calibration=[x], evaluate=lambda m: 1.0, schemes=["W8A8", "FP16"],
                        train=[(x, torch.zeros(32, dtype=torch.long))], qat_epochs=1,
                        progress=False)  # fmt: skip
    names = ["float32", "W8A8", "FP16", "W4A8 QAT"]
    assert calls == [names, names]
    assert [r["latency_bn_ms"] for r in rep.rows] == [1.0, 2.0, 3.0, 4.0]


def test_16_bit_weights_are_exactly_half_of_32_bit(setup):
    model, _x, rep = setup
    fp16 = rep.row("FP16")
    assert fp16["bits_per_weight"] == 16.0
    q = lowbit.quantize(model, "FP16")
    for name in ("0", "2"):
        assert 2 * layer_weight_bytes(q.get_submodule(name)) == layer_weight_bytes(model[int(name)])
    parts, fparts = fp16["energy_est_parts_uj"], rep.float_row["energy_est_parts_uj"]
    assert parts["weights"] * 2 == pytest.approx(fparts["weights"], rel=1e-12)


def test_speed_ups_are_ratios_of_the_same_runs_numbers(setup):
    _model, _x, rep = setup
    _title, _cols, rows, _note = _table(rep, "Latency")
    for row in rows:
        raw = rep.row(row["variant"])
        assert row["speed-up"] == f"{rep.float_row['latency_bn_ms'] / raw['latency_bn_ms']:.2f}x"
        assert row["speed-up b1"] == f"{rep.float_row['latency_b1_ms'] / raw['latency_b1_ms']:.2f}x"


def test_energy_estimate_ranks_integer_below_float(setup):
    _model, _x, rep = setup
    f, w8a8, fp16 = rep.float_row, rep.row("W8A8"), rep.row("FP16")
    assert w8a8["energy_est_uj"] < fp16["energy_est_uj"] < f["energy_est_uj"]
    # MACs are counted, not guessed: 64*128 + 128*10 per sample, 64 samples, fp32 (3.7 + 0.9 pJ)
    assert f["energy_est_parts_uj"]["compute"] == pytest.approx(64 * (64 * 128 + 128 * 10) * 4.6e-6)


def test_training_rows_and_qat_next_to_ptq(setup):
    _model, _x, rep = setup
    assert [t["training"] for t in rep.training][:2] == ["float32", "bf16 autocast"]
    assert all(t["seconds_per_epoch"] > 0 for t in rep.training)
    _title, _cols, rows, _note = _table(rep, "Techniques")
    assert [r["variant"] for r in rows] == ["float32", "W4A8", "W4A8+gptq", "W4A8 QAT"]


def test_outputs_are_self_contained_and_traceable(setup, tmp_path):
    _model, _x, rep = setup
    out = rep.save(tmp_path)
    page = (out / "report.html").read_text()
    assert page.count("<table>") == len(rep.tables())
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    data = json.loads((out / "report.json").read_text())
    assert data["meta"]["machine"]["torch"] == torch.__version__
    assert {"date", "cpu", "isa", "python"} <= set(data["meta"]["machine"])
    assert data["meta"]["schemes"] == ["FP16", "W8A8", "W4A16", "NF4", "W4A8", "W4A8+gptq"]
    assert [r["variant"] for r in data["rows"]][0] == "float32"
    md = (out / "report.md").read_text()
    assert "## Energy per batch of 64 (estimate)" in md and "Horowitz" in md
    for png in ("accuracy_vs_size", "latency", "layer_error", "weight_histogram"):
        assert (out / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input_gets_clear_errors(setup):
    model, x, _rep = setup
    ok = lambda m: 1.0  # noqa: E731
    with pytest.raises(ConfigError, match="non-empty list"):
        lowbit.report(model, calibration=[x], evaluate=ok, schemes=[])
    with pytest.raises(ConfigError, match="evaluate must be a function"):
        lowbit.report(model, calibration=[x], evaluate=None)
    with pytest.raises(ConfigError, match="train is empty"):
        lowbit.report(model, calibration=[x], evaluate=ok, schemes=["FP16"], train=[],
                      min_time_s=0.01)  # fmt: skip
    with pytest.raises(lowbit.UnknownPresetError):
        lowbit.report(model, calibration=[x], evaluate=ok, schemes=["W9A9"], min_time_s=0.01)
    with pytest.raises(lowbit.CalibrationError):
        lowbit.report(model, calibration=[], evaluate=ok)


def test_report_command_refreshes_the_readme_section(tmp_path, capsys):
    from lowbit.cli import main
    from lowbit.reporting.cli import END, START

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{START}\nold numbers\n{END}\n\nafter\n")
    assert main(["report", "--task", "digits", "--out", str(tmp_path / "r"),
                 "--readme", str(readme)]) == 0  # fmt: skip
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("# x\n\nbefore")
    assert text.rstrip().endswith("after")
    assert "\n#### Size and compression per precision\n" in text
    assert (
        main(
            [
                "report",
                "--task",
                "digits",
                "--out",
                str(tmp_path / "r2"),
                "--readme",
                str(tmp_path / "r" / "report.md"),
            ]
        )
        == 2
    )  # no markers: clear error
    assert "needs one line '<!-- lowbit-report:start -->'" in capsys.readouterr().err
    readme.write_text(f"{END}\n{START}\n")  # markers in the wrong order: refused up front
    assert main(["report", "--task", "digits", "--out", str(tmp_path / "r3"),
                 "--readme", str(readme)]) == 2  # fmt: skip


def test_a_model_with_an_embedding_table_under_cast_and_integer_schemes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Flatten(), nn.Linear(64, 4)).eval()
    ids = torch.randint(0, 50, (32, 4))
    ref = model(ids)
    cos = lambda m: float(nn.functional.cosine_similarity(m(ids), ref).mean())  # noqa: E731
    rep = lowbit.report(model, calibration=[ids], evaluate=cos, schemes=["FP16", "W4A16"],
                        min_time_s=0.02, progress=False)  # fmt: skip
    assert rep.row("FP16")["layer_sqnr_db"]["0"] > 60  # the table is stored in fp16
    assert 10 < rep.row("W4A16")["layer_sqnr_db"]["0"] < 40


def test_batch_one_cuts_batch_tensors_only():
    from lowbit.reporting.build import _slice

    ids, mask = torch.zeros(8, 5), torch.ones(5, 5)  # a [L, L] mask is not per sample
    args, kwargs = _slice(((ids, [ids, 3]), {"mask": mask, "x": {"y": ids}}), 1)
    assert args[0].shape == (1, 5) and args[1][0].shape == (1, 5) and args[1][1] == 3
    assert kwargs["mask"].shape == (5, 5) and kwargs["x"]["y"].shape == (1, 5)
    with pytest.raises(ConfigError, match="tensors"):
        _slice(((3,), {}), 1)


def test_rescaled_variants_report_no_weight_error(setup):
    model, x, _rep = setup
    rep = lowbit.report(model, calibration=[x[:64]], evaluate=lambda m: 1.0,
                        schemes=["W4A8+cle", "W4A8"], min_time_s=0.01, progress=False)  # fmt: skip
    assert set(rep.row("W4A8+cle")["layer_sqnr_db"].values()) == {None}  # CLE rescales weights
    assert all(v > 10 for v in rep.row("W4A8")["layer_sqnr_db"].values())


def test_a_variant_that_quantizes_nothing_says_so():
    """Group size 128 divides none of these rows: the 'W4A16-g128' row is the float model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(16, 48)
    rep = lowbit.report(model, calibration=[x], evaluate=lambda m: 1.0,
                        schemes=["W4A16-g128", "W8A16"], min_time_s=0.01, progress=False)  # fmt: skip
    _title, _cols, rows, _note = _table(rep, "Accuracy")
    share = {r["variant"]: r["layers quantized"] for r in rows}
    assert share == {"float32": "", "W4A16-g128": "0 (2 left float)", "W8A16": "2"}


def test_kernels_each_variant_ran_at_each_batch_size():
    """W4A16 at the calibration batch (160 rows) dequantizes into a float GEMM: the report says so."""
    from lowbit.kernels import cpu

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    rows = cpu.WEIGHT_ONLY_DEQUANT_MIN_ROWS
    x = torch.randn(rows, 256)
    rep = lowbit.report(model, calibration=[x], evaluate=lambda m: 1.0, schemes=["W4A16"],
                        min_time_s=0.01, progress=False)  # fmt: skip
    w4 = rep.row("W4A16")
    assert w4["kernels_b1"]["float_compute"] == {}  # int4 and int8 weight-pack kernels
    dequant = f"dequant+{'bf16' if cpu.dequant_dtype() is torch.bfloat16 else 'fp32'} matmul"
    assert w4["kernels_bn"]["float_compute"] == {n: f"{dequant} at {rows} rows" for n in "02"}
    _title, _cols, table, _note = _table(rep, "Kernels run")
    by = {r["variant"]: r for r in table}
    assert by["W4A16"][f"batch {rows}"] == f"2 {dequant} ({rows} rows)"
    assert by["W4A16"]["batch 1"] == "1 int4 _weight_int4pack_mm, 1 int8 _weight_int8pack_mm"
    assert by["float32"]["batch 1"] == "float"

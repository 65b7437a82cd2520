"""lowbit.compile (issue 19): same inputs, same outputs, on a graph runtime, or a clear reason why not."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import lowbit
from lowbit.runtime import compiling as rc
from lowbit.runtime import onnx_backends as ox
from tests._models import small_cnn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


class DictMLP(nn.Module):
    """Keyword inputs (ids + a float feature), a dict output: the tokenizer/ModelOutput shape."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 8)

    def forward(self, input_ids, scale):
        h = torch.relu(self.fc1(self.emb(input_ids).mean(1) * scale))
        return {"logits": self.fc2(h), "hidden": h}


def _cnn(scheme="W8A8"):
    torch.manual_seed(0)
    calib = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    return lowbit.quantize(small_cnn(), scheme, calibration=calib), calib


def _inputs(b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 50, (b, 7), generator=g),
            "scale": torch.rand(b, 1, generator=g) + 0.5}  # fmt: skip


@pytest.mark.parametrize("scheme", ["W8A8", "W8A8-dynamic", "W8A16"])
def test_onnxruntime_backend_gives_the_eager_models_outputs(scheme, tmp_path):
    q, calib = _cnn(scheme)
    c = lowbit.compile(q, calib[0][:1], backend="onnxruntime", calibration=calib,
                       cache_dir=tmp_path)  # fmt: skip
    x = torch.randn(32, 3, 8, 8)  # another batch size than the example: the batch is dynamic
    with torch.no_grad():
        ref, out = q(x), c(x)
    assert c.backend == "onnxruntime" and c.compile_s > 0
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert lowbit.measure.accuracy.sqnr_db(ref, out) > 30  # a wrong layout or grid gives < 10


def test_keyword_inputs_and_dict_outputs_keep_their_structure(tmp_path):
    torch.manual_seed(0)
    q = lowbit.quantize(DictMLP(), "W8A8-dynamic")
    c = lowbit.compile(q, _inputs(), backend="onnxruntime", cache_dir=tmp_path)
    x = _inputs(b=9, seed=2)
    with torch.no_grad():
        ref, out = q(**x), c(**x)
    assert set(out) == {"logits", "hidden"}
    for k in out:
        assert out[k].shape == ref[k].shape
        assert lowbit.measure.accuracy.sqnr_db(ref[k], out[k]) > 30
    with pytest.raises(TypeError, match="input 'input_ids'"):
        c(input_ids=x["input_ids"].float(), scale=x["scale"])


def test_a_float_model_is_refused():
    with pytest.raises(lowbit.InvalidModelError, match="lowbit.quantize"):
        lowbit.compile(small_cnn(), torch.randn(1, 3, 8, 8))


def test_an_unknown_backend_is_refused():
    q, calib = _cnn()
    with pytest.raises(lowbit.ConfigError, match="tensorrt"):
        lowbit.compile(q, calib[0][:1], backend="tensorrt")


def _without(package, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(ox.importlib.util, "find_spec",
                        lambda name, *a: None if name == package else real(name, *a))  # fmt: skip


def test_a_missing_runtime_is_named_when_asked_for(monkeypatch, tmp_path):
    _without("openvino", monkeypatch)
    q, calib = _cnn()
    with pytest.raises(lowbit.BackendUnavailableError, match="pip install openvino"):
        lowbit.compile(q, calib[0][:1], backend="openvino", cache_dir=tmp_path)


def test_auto_skips_missing_runtimes_with_their_reason_and_never_returns_a_slower_model(
    monkeypatch, tmp_path
):
    _without("openvino", monkeypatch)
    monkeypatch.setattr(rc, "BACKENDS", ("onnxruntime", "openvino"))  # no inductor: fast test
    q, calib = _cnn()
    c = lowbit.compile(q, calib[0][:1], cache_dir=tmp_path, measure_s=0.3)
    by_name = {cand.backend: cand for cand in c.candidates}
    assert "pip install openvino" in by_name["openvino"].skipped
    timed = {n: cand.median_ms for n, cand in by_name.items() if cand.median_ms is not None}
    assert set(timed) == {"onnxruntime", "eager"}
    assert c.backend == min(timed, key=timed.get)  # the fastest, eager included
    assert c.backend in c.why and "openvino: not used" in c.why


def test_a_backend_whose_outputs_disagree_is_not_chosen(monkeypatch, tmp_path):
    real = ox.build_runner
    monkeypatch.setattr(rc.ox, "build_runner",
                        lambda *a: (lambda xs: [-r for r in real(*a)(xs)]))  # fmt: skip
    monkeypatch.setattr(rc, "BACKENDS", ("onnxruntime",))
    q, calib = _cnn()
    c = lowbit.compile(q, calib[0][:1], cache_dir=tmp_path, measure_s=0.2)
    assert c.backend == "eager"
    assert "differ from the eager model" in c.candidates[0].skipped
    with pytest.raises(lowbit.BackendUnavailableError, match="differ from the eager"):
        lowbit.compile(q, calib[0][:1], backend="onnxruntime", cache_dir=tmp_path)


def test_the_export_is_cached_by_content(tmp_path):
    q, calib = _cnn()
    x = calib[0][:1]
    first = lowbit.compile(q, x, backend="onnxruntime", cache_dir=tmp_path)
    again = lowbit.compile(q, x, backend="onnxruntime", cache_dir=tmp_path)
    assert not first.candidates[0].cached and again.candidates[0].cached
    assert len(list((tmp_path / "compile").glob("*.onnx"))) == 1
    state = q.state_dict()
    state["fc.bias"] = state["fc.bias"] + 1.0  # a changed model must not reuse the old graph
    q.load_state_dict(state)  # (load_state_dict rebuilds the kernels' derived data)
    changed = lowbit.compile(q, x, backend="onnxruntime", cache_dir=tmp_path)
    assert not changed.candidates[0].cached
    with torch.no_grad():
        assert torch.allclose(changed(x), q(x), atol=0.05)


def test_no_cache_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    q, calib = _cnn()
    c = lowbit.compile(q, calib[0][:1], backend="onnxruntime", cache_dir=False)
    assert c(calib[0][:2]).shape == (2, 10)
    assert not (tmp_path / "compile").exists()


@pytest.mark.skipif(rc.ind.inductor_missing() is not None, reason="no C++ compiler")
def test_inductor_captures_a_quantized_mlp_in_one_graph(tmp_path):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    q = lowbit.quantize(mlp, "W8A8-dynamic")
    x = torch.randn(4, 32)
    assert rc.ind.graph_breaks(q, (x,), {}) == []
    c = lowbit.compile(q, x, backend="inductor", cache_dir=tmp_path)
    with torch.no_grad():
        assert lowbit.measure.accuracy.sqnr_db(q(x), c(x)) > 40


@pytest.mark.skipif(rc.ind.inductor_missing() is not None, reason="no C++ compiler")
def test_inductor_runs_int8_convs_at_a_batch_other_than_the_examples(tmp_path):
    """A shape-generic recompile crashed in Inductor's int8-conv lowering (a stride assertion)
    when the batch size changed; each shape now compiles statically."""
    q, calib = _cnn("W8A8")
    c = lowbit.compile(q, calib[0][:1], backend="inductor", cache_dir=tmp_path)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert lowbit.measure.accuracy.sqnr_db(q(x), c(x)) > 30


def test_example_inputs_that_are_not_tensors_are_refused():
    q, _ = _cnn()
    with pytest.raises(lowbit.ConfigError, match="example_inputs must be a tensor"):
        lowbit.compile(q, "not a batch")
    with pytest.raises(lowbit.ConfigError, match="tensors only"):
        lowbit.compile(q, (torch.randn(1, 3, 8, 8), 3))


def test_a_model_whose_outputs_are_not_tensors_is_refused():
    class Labels(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return [str(int(i)) for i in self.fc(x).argmax(1)]

    q = lowbit.quantize(Labels(), "W8A8-dynamic")
    with pytest.raises(lowbit.ConfigError, match="outputs are tensors"):
        lowbit.compile(q, torch.randn(2, 4))

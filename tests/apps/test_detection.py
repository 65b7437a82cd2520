"""The detection application: generated data, CenterNet targets and decoding, the COCO
evaluator's wiring, quantization of the detector, and input checks."""

from __future__ import annotations

import importlib

import pytest
import torch

import lowbit
from lowbit.apps.detection import CenterNet, coco_map, decode, evaluate_detections, qat_detector
from lowbit.apps.detection_data import INK, STRIDE, encode_targets, make_detection_set
from lowbit.errors import ConfigError
from lowbit.tasks import APP_TASKS

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def data():
    return make_detection_set(24, seed=1, noise=0.0)


def _perfect_output(targets, size: int = 64) -> torch.Tensor:
    """Raw model outputs that encode exactly the targets (heatmap logits of the Gaussians)."""
    enc = encode_targets(targets, size)
    heat = enc[:, :10].clamp(1e-6, 1 - 1e-6)
    return torch.cat([torch.logit(heat), enc[:, 10:14]], 1)


def test_generation_is_deterministic_per_seed_and_split():
    a, b = make_detection_set(6, seed=3), make_detection_set(6, seed=3)
    assert torch.equal(a.images, b.images)
    for ta, tb in zip(a.targets, b.targets, strict=True):
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
    assert not torch.equal(a.images, make_detection_set(6, seed=4).images)
    assert not torch.equal(a.images, make_detection_set(6, seed=3, split="test").images)


def test_boxes_are_tight_around_the_placed_glyphs(data):
    assert data.images.shape == (24, 1, 64, 64)
    outside = torch.ones(24, 64, 64, dtype=torch.bool)
    for n, target in enumerate(data.targets):
        boxes, labels = target["boxes"], target["labels"]
        assert 1 <= len(boxes) <= 4 and len(labels) == len(boxes)
        assert labels.min() >= 0 and labels.max() <= 9
        for x0, y0, x1, y1 in boxes.long().tolist():
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert 12 * 0.25 <= max(x1 - x0, y1 - y0) <= 28  # a glyph of 12-28 px
            crop = data.images[n, 0, y0:y1, x0:x1]
            # ink touches all four sides (contrast >= 0.7 scales INK)
            for edge in (crop[0], crop[-1], crop[:, 0], crop[:, -1]):
                assert edge.max() > 0.7 * INK
            outside[n, y0:y1, x0:x1] = False
    assert data.images[:, 0][outside].max() <= INK  # no ink outside the boxes


def test_targets_put_one_peak_per_object(data):
    enc = encode_targets(data.targets, 64)
    assert enc.shape == (24, 15, 64 // STRIDE, 64 // STRIDE)
    n_objects = sum(len(t["labels"]) for t in data.targets)
    assert int(enc[:, -1].sum()) == n_objects
    assert int(enc[:, :10].eq(1).sum()) == n_objects
    offsets = enc[:, 12:14][enc[:, -1:].expand(-1, 2, -1, -1).bool()]
    assert offsets.min() >= 0 and offsets.max() < 1


def test_perfect_heatmaps_score_map_one_through_the_evaluator(data):
    detections = decode(_perfect_output(data.targets))
    scores = evaluate_detections(detections, data.targets)
    assert scores["mAP@0.5"] == pytest.approx(1.0)
    assert scores["mAP@0.5:0.95"] == pytest.approx(1.0)


def test_coco_map_runs_the_model_and_decodes(data):
    class Oracle(torch.nn.Module):
        def forward(self, x):
            assert x.shape == data.images.shape
            return _perfect_output(data.targets)

    assert coco_map(Oracle(), data.images, data.targets) == pytest.approx(
        {"mAP@0.5": 1.0, "mAP@0.5:0.95": 1.0}
    )


def test_shifted_boxes_pass_at_iou_half_but_not_at_strict_thresholds(data):
    detections = decode(_perfect_output(data.targets))
    for det in detections:
        det["boxes"] = det["boxes"] + torch.tensor([1.0, 0.0, 1.0, 0.0])  # one pixel right
    scores = evaluate_detections(detections, data.targets)
    assert scores["mAP@0.5"] == pytest.approx(1.0)
    assert scores["mAP@0.5:0.95"] < 0.9


def test_wrong_class_scores_zero(data):
    detections = decode(_perfect_output(data.targets))
    for det in detections:
        det["labels"] = (det["labels"] + 1) % 10
    # every true box is now predicted with another class, only the low-score peaks remain
    assert evaluate_detections(detections, data.targets)["mAP@0.5"] < 0.1


def test_detector_quantizes_to_w8a8_and_runs(data):
    torch.manual_seed(0)
    model = CenterNet().eval()
    qmodel = lowbit.quantize(model, "W8A8", calibration=[data.images[:12]], progress=False)
    assert type(qmodel.head[-1]).__name__ == "QuantConv"
    with torch.no_grad():
        ref, out = model(data.images[:4]), qmodel(data.images[:4])
    assert out.shape == ref.shape == (4, 14, 16, 16)
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum())
    assert sqnr > 20
    assert set(coco_map(qmodel, data.images, data.targets)) == {"mAP@0.5", "mAP@0.5:0.95"}


def test_qat_fine_tune_returns_an_integer_detector(data):
    torch.manual_seed(0)
    model = CenterNet().eval()
    qmodel = qat_detector(model, data, [data.images[:12]], "W4A8", epochs=1)
    assert qmodel.lowbit_record.layers and not qmodel.training
    with torch.no_grad():
        assert qmodel(data.images[:2]).shape == (2, 14, 16, 16)


def test_bad_inputs_are_named():
    model, data = CenterNet(), make_detection_set(2, seed=0)
    with pytest.raises(ConfigError, match=r"\[n, 1, H, W\]"):
        coco_map(model, data.images[:, 0], data.targets)
    with pytest.raises(ConfigError, match="multiples of 4"):
        coco_map(model, data.images[..., :62], data.targets)
    with pytest.raises(ConfigError, match="2 images but 1 targets"):
        coco_map(model, data.images, data.targets[:1])
    with pytest.raises(ConfigError, match="split"):
        make_detection_set(2, split="val")
    with pytest.raises(ConfigError, match="glyph_sizes"):
        make_detection_set(2, glyph_sizes=(30, 20))


def test_registered_as_an_app_task():
    module, _, fn = APP_TASKS["detection"].partition(":")
    assert callable(getattr(importlib.import_module(module), fn))

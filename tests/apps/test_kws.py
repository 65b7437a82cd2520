"""Keyword spotting: features, the cached sample, quantization, the missing-espeak error.

The sample ``data/kws_sample.npz`` (80 clips, 8 per word, 8-bit log-mel codes) was written by
``lowbit.apps.kws_data.write_sample("tests/apps/data/kws_sample.npz")``; these tests read it, so
they run without espeak-ng. Tests that synthesize skip when espeak-ng is not installed.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.apps import kws, kws_data
from lowbit.apps.kws_data import FeatureConfig, log_mel
from lowbit.errors import ConfigError
from lowbit.measure.accuracy import sqnr_db

SAMPLE = Path(__file__).parent / "data" / "kws_sample.npz"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def _htk_centers(cfg: FeatureConfig) -> torch.Tensor:
    lo, hi = (2595 * math.log10(1 + f / 700) for f in (cfg.fmin, cfg.fmax))
    mels = torch.linspace(lo, hi, cfg.n_mels + 2, dtype=torch.float64)[1:-1]
    return 700 * (10 ** (mels / 2595) - 1)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3500.0])
def test_sine_energy_peaks_in_the_band_centred_on_its_frequency(freq):
    cfg = FeatureConfig()
    t = torch.arange(cfg.sample_rate) / cfg.sample_rate
    feats = log_mel(torch.sin(2 * math.pi * freq * t)[None], cfg)
    expected = int((_htk_centers(cfg) - freq).abs().argmin())
    assert int(feats[0].mean(dim=1).argmax()) == expected


def test_feature_shapes_and_the_cached_sample():
    assert log_mel(torch.zeros(3, 16000)).shape == (3, 40, 101)  # 25 ms / 10 ms, centred frames
    x, y = kws_data.load_sample(SAMPLE)
    assert x.shape == (80, 1, 40, 101) and x.dtype == torch.float32
    assert torch.bincount(y, minlength=10).tolist() == [8] * 10
    assert SAMPLE.stat().st_size < 300_000


def test_train_and_test_pools_are_disjoint():
    for field in ("accents", "variants", "speeds", "pitches"):
        assert not set(getattr(kws_data.TRAIN, field)) & set(getattr(kws_data.TEST, field))


def test_a_briefly_trained_model_quantizes_to_w8a8_and_runs():
    x, y = kws_data.load_sample(SAMPLE)
    split = lowbit.tasks.Split(x, y, x, y)
    torch.manual_seed(0)
    model = kws.train_kws(kws.DSCNN(width=32), split, epochs=3, seed=0)
    qmodel = lowbit.quantize(model, "W8A8", calibration=[x[:40], x[40:]])
    with torch.inference_mode():
        ref, out = model(x), qmodel(x)
    assert out.shape == (80, 10) and torch.isfinite(out).all()
    assert sqnr_db(ref, out) > 15.0  # int8 weights and activations: close to float
    assert lowbit.model_size(qmodel) < lowbit.model_size(model)  # small: JSON metadata


def test_missing_espeak_gives_install_instructions(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="apt-get install espeak-ng"):
        kws_data.make_split(dataclasses.replace(kws_data.TRAIN, per_word=1))
    with pytest.raises(kws_data.EspeakNotFoundError):
        kws.problem()


@needs_espeak
def test_synthesis_is_deterministic_for_a_seed():
    cfg = dataclasses.replace(kws_data.TEST, per_word=1, copies=2, seed=7)
    x1, y1 = kws_data.make_split(cfg)
    x2, y2 = kws_data.make_split(cfg)
    x3, _ = kws_data.make_split(dataclasses.replace(cfg, seed=8))
    assert x1.shape == (20, 1, 40, 101) and torch.equal(y1, y2)
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, x3)


@needs_espeak
def test_synthesized_words_last_under_a_second():
    speech = kws_data.synthesize("seven", "en-us", 160, 50)
    assert 0.2 < len(speech) / 16000 < 1.0


def test_kws_is_a_report_task():
    assert "kws" in lowbit.tasks.task_names()
    assert lowbit.tasks.APP_TASKS["kws"] == "lowbit.apps.kws:problem"

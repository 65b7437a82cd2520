"""Spoken digits synthesized locally with espeak-ng, as 40-band log-mel features.

How the data is made (no download; ``apt-get install espeak-ng`` provides the synthesizer):

1. Each of the ten words "zero".."nine" is spoken by ``espeak-ng --stdout`` (22.05 kHz WAV) with
   a voice ``ACCENT+VARIANT``, a speed ``-s`` (words per minute) and a pitch ``-p`` (0-99) drawn by
   a seeded RNG from the split's pools. Training and test pools are disjoint: the test set's
   accents, voice variants, speeds and pitches never occur in training (:data:`TRAIN`, :data:`TEST`).
2. The waveform is resampled to 16 kHz (``scipy.signal.resample_poly``), trimmed of leading and
   trailing silence, scaled to a random peak level in [0.1, 0.9] and placed at a random offset
   in a 1 s window.
3. White or pink noise (seeded) is added at an SNR drawn uniformly from ``snr_db`` (5-30 dB),
   measured against the speech's power. Each synthesized utterance yields ``copies`` such
   shifted, noisy versions.
4. Features: log of a 40-band mel power spectrogram, 25 ms Hann window, 10 ms hop (``torch.stft``
   with n_fft 512 and a triangular HTK-mel filterbank, 20 Hz-8 kHz), shape ``[1, 40, 101]``.

The result is cached as ``.npz`` (float16 features, int64 labels) in ``~/.cache/lowbit/kws/``
(``$XDG_CACHE_HOME/lowbit/kws`` when set), named by a hash of every generation parameter and the
espeak-ng version, so a second run loads in about a second. Delete the folder to rebuild.

>>> fb = mel_filterbank(FeatureConfig())
>>> tuple(fb.shape)
(40, 257)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly

from lowbit.errors import ConfigError
from lowbit.tasks import Split

__all__ = ["WORDS", "TRAIN", "TEST", "SynthConfig", "FeatureConfig", "EspeakNotFoundError",
           "espeak_binary", "synthesize", "log_mel", "mel_filterbank", "make_split",
           "load_split", "write_sample", "load_sample"]  # fmt: skip

log = logging.getLogger(__name__)

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FORMAT_VERSION = 1  # bump when the generation code changes what a config produces


class EspeakNotFoundError(ConfigError):
    """The ``espeak-ng`` synthesizer the keyword-spotting data needs is not installed."""


@dataclass(frozen=True)
class SynthConfig:
    """Pools the utterances of one split are drawn from, and how many to make."""

    accents: tuple[str, ...]
    variants: tuple[str, ...]  # espeak-ng voice variants ("" = the accent's default voice)
    speeds: tuple[int, ...]  # words per minute (espeak-ng -s)
    pitches: tuple[int, ...]  # 0-99 (espeak-ng -p)
    per_word: int  # distinct synthesized utterances per word
    copies: int = 1  # shifted, noisy versions of each
    snr_db: tuple[float, float] = (5.0, 30.0)
    seed: int = 0


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000
    seconds: float = 1.0
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    n_mels: int = 40
    fmin: float = 20.0
    fmax: float = 8000.0


TRAIN = SynthConfig(
    accents=("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029"),
    variants=("", "m1", "m3", "m6", "f1", "f3", "f5", "klatt", "croak"),
    speeds=(120, 140, 160, 180, 200),
    pitches=(20, 35, 50, 65, 80),
    per_word=200,
    copies=2,
)
TEST = SynthConfig(
    accents=("en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc"),
    variants=("m2", "m4", "m7", "f2", "f4", "klatt3"),
    speeds=(130, 150, 170, 190),
    pitches=(28, 42, 58, 72),
    per_word=60,
    seed=1,
)


def espeak_binary() -> str:
    """Path of ``espeak-ng``, or an :class:`EspeakNotFoundError` that says how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise EspeakNotFoundError(
            "the keyword-spotting data is synthesized with espeak-ng, which is not on PATH; "
            "install it with `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install "
            "espeak-ng` (macOS), or use the cached sample (lowbit.apps.kws_data.load_sample)"
        )
    return path


def _espeak_version() -> str:
    out = subprocess.run([espeak_binary(), "--version"], capture_output=True, text=True)
    return out.stdout.split("Data at")[0].strip()


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit mono PCM from espeak-ng's streamed WAV (its header's sizes are placeholders)."""
    if data[:4] != b"RIFF" or b"data" not in data[:100]:
        raise ConfigError("espeak-ng did not write a WAV stream")
    rate = int.from_bytes(data[24:28], "little")
    start = data.index(b"data", 12) + 8
    pcm = data[start : start + (len(data) - start) // 2 * 2]
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, rate


def synthesize(word: str, voice: str, speed: int, pitch: int, sample_rate: int = 16000):
    """``word`` spoken by espeak-ng, resampled to ``sample_rate``, silence trimmed (float32)."""
    cmd = [espeak_binary(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0 or len(proc.stdout) < 100:
        raise ConfigError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.decode()[:200]}")
    wave, rate = _read_wav(proc.stdout)
    g = math.gcd(sample_rate, rate)
    wave = resample_poly(wave, sample_rate // g, rate // g).astype(np.float32)
    loud = np.flatnonzero(np.abs(wave) > 0.02 * np.abs(wave).max())
    pad = sample_rate // 100  # keep 10 ms around the speech
    return wave[max(loud[0] - pad, 0) : loud[-1] + pad]


def _noise(n: int, pink: bool, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white noise, or pink noise (power ~ 1/f) by shaping white noise's spectrum."""
    x = rng.standard_normal(n)
    if pink:
        spec = np.fft.rfft(x)
        spec[1:] /= np.sqrt(np.arange(1, len(spec)))
        spec[0] = 0.0
        x = np.fft.irfft(spec, n)
    return x / np.sqrt(np.mean(x**2))


def _augment(speech: np.ndarray, length: int, snr_db, rng: np.random.Generator) -> np.ndarray:
    """Random peak level, random offset in a ``length`` window, noise at a random SNR."""
    if len(speech) > length:  # slow voices can exceed the window: random crop
        start = int(rng.integers(0, len(speech) - length + 1))
        speech = speech[start : start + length]
    speech = speech / np.abs(speech).max() * rng.uniform(0.1, 0.9)
    out = np.zeros(length)
    offset = int(rng.integers(0, length - len(speech) + 1))
    out[offset : offset + len(speech)] = speech
    snr = rng.uniform(*snr_db)
    # SNR = 10 log10(P_speech / P_noise), P_speech over the spoken part only
    noise_rms = np.sqrt(np.mean(speech**2) / 10 ** (snr / 10))
    out += noise_rms * _noise(length, bool(rng.integers(2)), rng)
    return out.astype(np.float32)


def mel_filterbank(cfg: FeatureConfig) -> torch.Tensor:
    """``[n_mels, n_fft // 2 + 1]`` triangles spaced evenly on the HTK mel scale.

    mel(f) = 2595 log10(1 + f / 700); band m rises from edge m to edge m+1 and falls to m+2.
    """
    mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    edges_mel = torch.linspace(mel(cfg.fmin), mel(cfg.fmax), cfg.n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    freqs = torch.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1, dtype=torch.float64)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up, down = (freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def log_mel(waves: torch.Tensor, cfg: FeatureConfig = FeatureConfig()) -> torch.Tensor:
    """``[n, samples]`` waveforms -> ``[n, n_mels, frames]`` log mel power, ln(mel + 1e-6)."""
    win = round(cfg.sample_rate * cfg.win_ms / 1000)
    hop = round(cfg.sample_rate * cfg.hop_ms / 1000)
    spec = torch.stft(waves.float(), cfg.n_fft, hop_length=hop, win_length=win,
                      window=torch.hann_window(win), center=True, return_complex=True)  # fmt: skip
    power = spec.real**2 + spec.imag**2
    return torch.log(torch.einsum("mf,nft->nmt", mel_filterbank(cfg), power) + 1e-6)


def _recipes(cfg: SynthConfig, rng: np.random.Generator) -> list[tuple[int, str, int, int]]:
    """(label, voice, speed, pitch) for every utterance, drawn from the pools."""
    out = []
    for label in range(len(WORDS)):
        for _ in range(cfg.per_word):
            accent = cfg.accents[rng.integers(len(cfg.accents))]
            variant = cfg.variants[rng.integers(len(cfg.variants))]
            voice = f"{accent}+{variant}" if variant else accent
            speed = int(cfg.speeds[rng.integers(len(cfg.speeds))])
            out.append((label, voice, speed, int(cfg.pitches[rng.integers(len(cfg.pitches))])))
    return out


def make_split(cfg: SynthConfig, feat: FeatureConfig = FeatureConfig()):
    """Synthesize ``cfg`` (2 espeak-ng processes at a time): ``([n, 1, mels, frames], [n])``,
    shuffled. Deterministic for a given config and espeak-ng version."""
    espeak_binary()
    rng = np.random.default_rng(cfg.seed)
    recipes = _recipes(cfg, rng)
    with ThreadPoolExecutor(max_workers=2) as pool:
        speech = list(
            pool.map(lambda r: synthesize(WORDS[r[0]], *r[1:], feat.sample_rate), recipes)
        )
    length = round(feat.sample_rate * feat.seconds)
    waves, labels = [], []
    for (label, *_), s in zip(recipes, speech, strict=True):
        for _ in range(cfg.copies):
            waves.append(_augment(s, length, cfg.snr_db, rng))
            labels.append(label)
    order = rng.permutation(len(waves))
    x = log_mel(torch.from_numpy(np.stack(waves)[order]), feat).unsqueeze(1)
    return x, torch.tensor(labels, dtype=torch.long)[order]


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "lowbit" / "kws"


def _key(train: SynthConfig, test: SynthConfig, feat: FeatureConfig) -> str:
    parts = {"format": FORMAT_VERSION, "espeak": _espeak_version(), "train": dataclasses.asdict(train),
             "test": dataclasses.asdict(test), "features": dataclasses.asdict(feat)}  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def load_split(
    train: SynthConfig = TRAIN,
    test: SynthConfig = TEST,
    feat: FeatureConfig = FeatureConfig(),
    cache: Path | None = None,
) -> Split:
    """Training and held-out test features, from the cache or synthesized (and cached)."""
    path = (cache or cache_dir()) / f"kws-{_key(train, test, feat)}.npz"
    if not path.is_file():
        log.info("synthesizing spoken digits into %s", path)
        arrays = {}
        for name, cfg in (("train", train), ("test", test)):
            x, y = make_split(cfg, feat)
            arrays[f"x_{name}"], arrays[f"y_{name}"] = x.half().numpy(), y.numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # never leave half a cache file
    with np.load(path, allow_pickle=False) as z:  # a cache file is data, never code
        t = {k: torch.from_numpy(z[k]) for k in z.files}
    return Split(t["x_train"].float(), t["y_train"], t["x_test"].float(), t["y_test"])


def write_sample(path: str | os.PathLike, per_word: int = 8, seed: int = 1234) -> Path:
    """A small test set from the training pools, stored as 8-bit codes of the log-mel features
    (x ≈ codes * scale + offset; about 0.1 nats per step) so it stays under 300 KB."""
    x, y = make_split(dataclasses.replace(TRAIN, per_word=per_word, copies=1, seed=seed))
    lo, hi = float(x.min()), float(x.max())
    scale = (hi - lo) / 255
    codes = torch.round((x - lo) / scale).to(torch.uint8).numpy()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, codes=codes, labels=y.numpy(), scale=scale, offset=lo)
    return out


def load_sample(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[n, 1, 40, 101]`` (float32) and labels of a :func:`write_sample` file."""
    with np.load(path, allow_pickle=False) as z:  # a cache file is data, never code
        x = torch.from_numpy(z["codes"]).float() * float(z["scale"]) + float(z["offset"])
        return x, torch.from_numpy(z["labels"]).long()

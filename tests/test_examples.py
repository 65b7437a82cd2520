"""The example scripts run end to end (small settings), as a user would start them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_gpt2_example_generates_and_reloads():
    pytest.importorskip("transformers")
    out = _run("examples/gpt2_generate.py", "--layers", "1", "--width", "64")
    rows = [line for line in out.splitlines() if line.startswith("| W")]
    assert len(rows) == 2 and all(line.rstrip(" |").endswith("True") for line in rows), out


def test_timm_example_quantizes_a_model():
    if importlib.util.find_spec("timm") is None:  # importing it needs lowbit's torchvision shim
        pytest.skip("timm is not installed")
    out = _run("examples/timm_classifier.py", "--model", "resnet10t", "--schemes", "W8A8",
               "--no-bench")  # fmt: skip
    assert "| W8A8" in out, out

"""Two processes under torchrun (gloo): replicas stay equal and the result converts and loads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import lowbit
from lowbit.tasks import DigitsCNN


def test_two_process_ddp_qat_run(tmp_path) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "lowbit.qat.ddp_demo", "--out", str(tmp_path), "--epochs", "1",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "ddp_report.json").read_text())
    assert report["world_size"] == 2
    assert report["replicas_max_abs_diff"] == 0.0  # DDP keeps the replicas bit-identical
    assert report["accuracy"] > 0.9
    loaded = lowbit.load(tmp_path / "model", DigitsCNN())
    assert loaded(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_lazy_steps_under_torch_distributed_are_refused(tmp_path) -> None:
    import torch.distributed as dist

    from lowbit import qat
    from lowbit.errors import CalibrationError

    prepared = qat.prepare(torch.nn.Sequential(torch.nn.Linear(8, 4)), "W8A8")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        with pytest.raises(CalibrationError, match="calibration=...") as info:
            prepared(torch.randn(2, 8))
        assert "DDP" in str(info.value)
    finally:
        dist.destroy_process_group()

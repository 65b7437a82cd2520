"""The package facade: what ``import lowbit`` alone makes reachable."""

from __future__ import annotations

import gc
import subprocess
import sys
import warnings

import pytest

from lowbit.kernels import cpu
from lowbit.measure.machine import machine_info

SUBPACKAGE_NAMES = ["lowbit.qat.prepare", "lowbit.qat.convert", "lowbit.export.export_onnx",
                    "lowbit.measure.compare_latency", "lowbit.nn.QuantLinear",
                    "lowbit.ptq.PTQOptions", "lowbit.transforms.bn_fold", "lowbit.algorithms.gptq",
                    "lowbit.kernels.reference"]  # fmt: skip


def test_subpackages_are_reachable_from_a_bare_import() -> None:
    """``import lowbit; lowbit.qat.prepare(...)`` raised AttributeError (issue 18).

    A fresh interpreter: in this one, other tests have imported the subpackages already.
    """
    code = "import lowbit\n" + "\n".join(SUBPACKAGE_NAMES)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("read", [cpu.has_vnni.__wrapped__, machine_info])
def test_cpuinfo_is_closed_after_reading(read) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        read()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_no_public_name_shadows_a_submodule() -> None:
    """``lowbit.report`` (a function) hid the ``lowbit.report`` package: ``lowbit.report.Report``
    failed (issue 18). The package is ``lowbit.reporting`` now, the pipeline ``lowbit.pipeline``."""
    import pkgutil

    import lowbit

    modules = {m.name for m in pkgutil.iter_modules(lowbit.__path__)}
    for name in lowbit.__all__:
        value = getattr(lowbit, name)
        assert name not in modules or type(value).__name__ == "module", name
    assert lowbit.reporting.Report is lowbit.Report
    assert lowbit.pipeline.quantize is lowbit.quantize


def test_a_star_import_leaves_torch_nn_alone() -> None:
    """``from lowbit import *`` must not bind ``nn`` (lowbit.nn) over ``torch.nn`` (review)."""
    scope: dict = {}
    exec("from torch import nn\nfrom lowbit import *", scope)
    assert scope["nn"] is __import__("torch").nn

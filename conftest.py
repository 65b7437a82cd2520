"""Suite-wide test set-up: a derandomized hypothesis profile, and names for the doctests.

Hypothesis runs derandomized (the examples are a fixed function of each test's source), so a
property that passes in CI passes on every machine and a failing example fails every run. The
profile is loaded here, before the test modules are collected, so every ``@settings(...)`` in
the suite inherits it (hypothesis' settings fall back to ``settings.default`` when they are
built). ``LOWBIT_HYPOTHESIS_PROFILE=random pytest ...`` searches with fresh random examples (and
hypothesis' example database) by hand; a failure it finds prints a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("random", derandomize=False, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("LOWBIT_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    import torch
    from torch import nn

    import lowbit
    from lowbit import QuantConfig, QuantScheme, TensorQuantSpec, get_preset
    from lowbit.formats import get_format

    torch.manual_seed(0)
    doctest_namespace.update(
        torch=torch,
        nn=nn,
        lowbit=lowbit,
        get_preset=get_preset,
        get_format=get_format,
        QuantConfig=QuantConfig,
        QuantScheme=QuantScheme,
        TensorQuantSpec=TensorQuantSpec,
    )

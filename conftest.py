"""Names the docstring examples in src/lowbit use without importing (they run as doctests)."""

from __future__ import annotations

import pytest


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

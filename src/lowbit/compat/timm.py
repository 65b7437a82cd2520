"""``import timm`` on a CPU-only torch whose torchvision has no loadable compiled ops.

PyPI's torchvision is built against CUDA; beside the CPU torch its ``_C`` library does not load,
and ``import torchvision`` then fails in ``_meta_registrations`` with "operator torchvision::nms
does not exist": it registers fake kernels for ``nms``/``qnms`` whether or not the library
loaded. timm imports torchvision (transforms, ``FrozenBatchNorm2d``), so it fails too.

:func:`import_timm` declares those two operators' schemas first (a ``FRAGMENT`` library, no
kernels), after which torchvision's pure-Python parts and every timm model build. Calling
``torchvision.ops.nms`` still fails, with torch's "no kernel" error: detection models that
need it are out of reach this way, classification backbones are not.

>>> timm = import_timm()  # doctest: +SKIP
>>> model = timm.create_model("resnet18", pretrained=False)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["import_timm", "ensure_torchvision_importable"]

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBS: list[torch.library.Library] = []  # kept alive: dropping a Library removes its schemas


def _has_schema(name: str) -> bool:
    try:
        torch._C._get_schema(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def _load_torchvision_library() -> bool:
    """Load torchvision's compiled ops as torchvision itself would; False if they do not load."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for lib in sorted(Path(folder).glob("_C*.so")):
            try:
                torch.ops.load_library(str(lib))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def ensure_torchvision_importable() -> None:
    """Make ``import torchvision`` work on the CPU torch (timm and transformers import it).

    transformers imports torchvision when it is installed, so loading a BERT fails the same way
    as timm does without this; call it before importing either.
    """
    _declare_torchvision_ops()


def _declare_torchvision_ops() -> None:
    if all(_has_schema(n) for n in _SCHEMAS) or _load_torchvision_library():
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _SCHEMAS.items():
        if not _has_schema(name):
            lib.define(schema)
    _LIBS.append(lib)


def import_timm() -> ModuleType:
    """``import timm``, declaring torchvision's ``nms``/``qnms`` schemas first if missing.

    Raises ImportError with the install command when timm is not installed.
    """
    _declare_torchvision_ops()
    try:
        return importlib.import_module("timm")
    except ImportError as exc:
        raise ImportError(
            f"timm is needed for this model ({exc}); install it with pip install timm"
        ) from exc

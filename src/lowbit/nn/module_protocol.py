"""How a layer with derived kernel data keeps behaving like an ordinary ``nn.Module``.

A quantized layer *stores* integer codes and their qparams as buffers; its kernels read data
*derived* from them (oneDNN's prepacked conv weight, the int4 pack, fused epilogue vectors).
Derived data is opaque (a prepacked weight has no storage to copy or pickle) and would go stale
if the buffers changed, so :class:`PreparedModule` never carries it across a module operation:

* ``copy.deepcopy`` / ``pickle`` / ``torch.save(module)``: derived attributes (named in
  ``_derived``) are left out of the state and rebuilt by ``_prepare()`` on the other side.
* ``load_state_dict``: ``_prepare()`` runs after the new values are copied in.
* ``.to(device)`` / ``.cuda()`` / ``to_empty``: the kernels are CPU-only, so a move off the CPU is
  refused with :class:`~lowbit.errors.UnsupportedDeviceError` before any tensor is touched.
* ``.to(dtype)`` / ``.half()`` / ``.bfloat16()`` / ``.float()``: the stored tensors keep their
  dtypes (integer codes stay integers, scales keep the precision the scheme chose, so the layer
  computes exactly what it did); the layers cast activations on the way in and give outputs in
  the input's dtype. Layers without a float input (embeddings) follow the new dtype through
  :meth:`PreparedModule._follow_float_dtype`.

>>> import copy
>>> from lowbit.nn import QuantConv
>>> conv = QuantConv.from_float(nn.Conv2d(4, 8, 3), get_preset("W8A8-dynamic"))
>>> x = torch.randn(1, 4, 6, 6)
>>> torch.equal(copy.deepcopy(conv)(x), conv(x))
True
>>> conv.half().qweight.dtype, conv(x.half()).dtype
(torch.int8, torch.float16)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from lowbit.errors import UnsupportedDeviceError

__all__ = ["PreparedModule", "CPU_ONLY"]

# Probes for what a conversion function does: two float dtypes, so that converting *to* either
# one still shows, and an integer one for conversions that touch every tensor (``.type()``).
_PROBE_DTYPES = (torch.float32, torch.float16, torch.int8)

CPU_ONLY = "lowbit's quantized kernels run on CPU only"


class PreparedModule(nn.Module):
    """An ``nn.Module`` whose kernel data is derived from its stored tensors by ``_prepare()``.

    Subclasses list the attributes ``_prepare()`` sets in ``_derived``; those are the only
    attributes not copied, pickled or moved (they are rebuilt instead).
    """

    _derived: ClassVar[tuple[str, ...]] = ()

    def _prepare(self) -> None:
        """Derive kernel data from the stored tensors and choose the kernel (none by default)."""

    def _follow_float_dtype(self, dtype: torch.dtype) -> None:
        """React to ``.to(dtype)``; layers whose output follows their input's dtype need not."""

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for name in self._derived:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._prepare()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._prepare()  # derived data must follow the values just copied in

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        """``.to()``, ``.cuda()``, ``.half()``... all come here; see the module docstring."""
        probes = [fn(torch.zeros((), dtype=dt)) for dt in _PROBE_DTYPES]
        moved = next((p.device for p in probes if p.device.type != "cpu"), None)
        if moved is not None:
            raise UnsupportedDeviceError(
                f"{self._describe()} cannot move to device {str(moved)!r}: {CPU_ONLY}. Keep the "
                "quantized model on the CPU and give it CPU inputs (x.cpu()); modules visited "
                "before this one may already have moved (model.cpu() brings them back)"
            )
        if any(p.dtype != dt for p, dt in zip(probes, _PROBE_DTYPES, strict=True)):
            # a dtype conversion: the stored tensors *are* the quantized layer; they stay as is
            if probes[0].is_floating_point():
                self._follow_float_dtype(probes[0].dtype)
            if recurse:
                for child in self.children():
                    child._apply(fn)
            return self
        before = self._stored_identity()
        super()._apply(fn, recurse)
        if self._stored_identity() != before:  # replaced (to_empty, channels_last): rebuild
            self._prepare()
        return self

    def _describe(self) -> str:
        scheme = getattr(self, "scheme", None)
        return type(self).__name__ + (f" ({scheme.name})" if scheme is not None else "")

    def _stored_identity(self) -> list[tuple[str, int, int]]:
        """Which tensor objects and storages hold the stored values (changes mean re-prepare)."""
        named = [*self._parameters.items(), *self._buffers.items()]
        return [(n, id(t), t.data_ptr()) for n, t in named if t is not None]

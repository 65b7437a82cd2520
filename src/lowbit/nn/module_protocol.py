"""How a layer with derived kernel data keeps behaving like an ordinary ``nn.Module``.

A quantized layer *stores* integer codes and their qparams as buffers; its kernels read data
*derived* from them (oneDNN's prepacked conv weight, the int4 pack, fused epilogue vectors).
Derived data is opaque (a prepacked weight has no storage to copy or pickle) and would go stale
if the buffers changed, so :class:`PreparedModule` never carries it across a module operation:

* ``copy.deepcopy`` / ``pickle`` / ``torch.save(module)``: derived attributes (named in
  ``_derived``) are left out of the state and rebuilt by ``_prepare()`` on the other side.
* ``load_state_dict``: ``_prepare()`` runs after the new values are copied in.

>>> import copy
>>> from lowbit.nn import QuantConv
>>> conv = QuantConv.from_float(nn.Conv2d(4, 8, 3), get_preset("W8A8-dynamic"))
>>> x = torch.randn(1, 4, 6, 6)
>>> torch.equal(copy.deepcopy(conv)(x), conv(x))
True
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

__all__ = ["PreparedModule"]


class PreparedModule(nn.Module):
    """An ``nn.Module`` whose kernel data is derived from its stored tensors by ``_prepare()``.

    Subclasses list the attributes ``_prepare()`` sets in ``_derived``; those are the only
    attributes not copied or pickled (they are rebuilt instead).
    """

    _derived: ClassVar[tuple[str, ...]] = ()

    def _prepare(self) -> None:
        """Derive kernel data from the stored tensors and choose the kernel (none by default)."""

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

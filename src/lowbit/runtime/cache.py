"""Where ``lowbit.compile`` keeps what it can reuse: exported graphs, keyed by their content.

The key hashes everything an exported graph depends on: the model's tensors (codes, scales,
biases), its structure and schemes (``repr``), the calling convention, the calibration batches and
the versions of lowbit, torch and the runtime. A changed model therefore never reuses a stale
graph. Runtimes keep their own caches beside it (OpenVINO's compiled blobs, Inductor's FX graph
cache, which torch manages itself).

Default directory: ``$LOWBIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lowbit``, else ``~/.cache/lowbit``;
``cache_dir=False`` turns caching off (a temporary directory per compile).

>>> key = content_key(nn.Linear(2, 2), "sig", [], "onnxruntime 1.0")
>>> len(key)
32
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

__all__ = ["default_cache_dir", "resolve_cache_dir", "content_key"]


def default_cache_dir() -> Path:
    """``$LOWBIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lowbit``, else ``~/.cache/lowbit``."""
    if os.environ.get("LOWBIT_CACHE_DIR"):
        return Path(os.environ["LOWBIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lowbit"


def resolve_cache_dir(cache_dir: str | os.PathLike | bool | None) -> Path | None:
    """The compile cache folder (created), or None when caching is off (``cache_dir=False``)."""
    if cache_dir is False:
        return None
    root = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
    path = root / "compile"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _update_tensor(h, name: str, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    # bytes of any dtype (bf16 has no numpy twin): view the storage as uint8
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def content_key(
    model: nn.Module, signature: str, batches: Iterable[Iterable[torch.Tensor]], runtime: str
) -> str:
    """A 128-bit hex digest of everything an exported graph of ``model`` depends on."""
    from lowbit import __version__

    h = hashlib.blake2b(digest_size=16)
    h.update(f"lowbit {__version__}|torch {torch.__version__}|{runtime}|{signature}|".encode())
    h.update(repr(model).encode())
    for name, t in model.state_dict().items():
        if isinstance(t, torch.Tensor):
            _update_tensor(h, name, t)
    for i, batch in enumerate(batches):
        for j, t in enumerate(batch):
            _update_tensor(h, f"calibration.{i}.{j}", t)
    return h.hexdigest()

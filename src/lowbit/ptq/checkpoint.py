"""Sharded safetensors checkpoints in transformers' layout, read and written a block at a time.

A checkpoint is a directory holding ``config.json`` and either one ``model.safetensors`` or
shards ``model-0000i-of-0000N.safetensors`` with ``model.safetensors.index.json``
(``{"metadata": {"total_size": bytes}, "weight_map": {tensor name: shard file}}``), the layout
``transformers`` writes for large models. :class:`CheckpointReader` reads any set of tensors
from it, opening each shard only while its tensors are copied out, so the memory a read costs
is the tensors asked for, never the whole file. :func:`write_random_llama` writes a random
model in that layout without ever holding it: one shard per decoder block.

>>> from transformers import LlamaConfig  # doctest: +SKIP
>>> path = write_random_llama(LlamaConfig(num_hidden_layers=2, hidden_size=64), "ckpt/")  # doctest: +SKIP
>>> CheckpointReader(path).read(["model.norm.weight"])["model.norm.weight"].shape  # doctest: +SKIP
torch.Size([64])
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lowbit.errors import ArtifactError, InvalidModelError

__all__ = [
    "CheckpointReader",
    "write_random_llama",
    "meta_skeleton",
    "decoder_blocks",
    "INDEX_FILE",
    "SINGLE_FILE",
]

log = logging.getLogger(__name__)

INDEX_FILE, SINGLE_FILE = "model.safetensors.index.json", "model.safetensors"


def meta_skeleton(config: Any) -> nn.Module:
    """``AutoModelForCausalLM`` of ``config`` on the meta device: the structure, no memory."""
    from lowbit.compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # transformers imports torchvision when it is installed
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config).eval()


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(name, blocks)``: the ``nn.ModuleList`` holding most of the model's parameters (the
    decoder layers of LLaMA, Mistral, Qwen2... as ``model.layers``)."""
    best, size = None, 0
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0:
            n = sum(p.numel() for p in m.parameters())
            if n > size:
                best, size = (name, m), n
    if best is None:
        raise InvalidModelError(
            f"{type(model).__name__} keeps no layers in an nn.ModuleList; block-wise loading "
            "needs a decoder whose blocks sit in one list (such as model.layers)"
        )
    return best


class CheckpointReader:
    """Reads named tensors from a safetensors checkpoint (one file, or shards with an index)."""

    def __init__(self, path: str | os.PathLike):
        root = Path(path)
        if root.is_file():
            root, files = root.parent, [root.name]
            self.shard_of = self._names_in(root, files)
        elif (root / INDEX_FILE).is_file():
            try:
                weight_map = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))[
                    "weight_map"
                ]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ArtifactError(f"{root / INDEX_FILE} is not a shard index ({exc})") from None
            self.shard_of = {str(k): str(v) for k, v in weight_map.items()}
            for shard in sorted(set(self.shard_of.values())):
                if not (root / shard).is_file():
                    raise ArtifactError(f"{root / INDEX_FILE} names shard {shard!r}, not found")
        elif (root / SINGLE_FILE).is_file():
            self.shard_of = self._names_in(root, [SINGLE_FILE])
        else:
            raise ArtifactError(
                f"{root} holds no {SINGLE_FILE} and no {INDEX_FILE}; pass a directory written "
                "by transformers' save_pretrained (safetensors) or by write_random_llama"
            )
        self.root = root

    @staticmethod
    def _names_in(root: Path, files: list[str]) -> dict[str, str]:
        names = {}
        for f in files:
            with safe_open(str(root / f), framework="pt") as st:
                names.update(dict.fromkeys(st.keys(), f))
        return names

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors ``names`` (each shard opened once, and closed before returning)."""
        names = list(names)
        missing = [n for n in names if n not in self.shard_of]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InvalidModelError(
                f"checkpoint {self.root} has no tensor {missing[0]!r}{more}, which the model's "
                "config needs; is the checkpoint incomplete or written for another config?"
            )
        by_shard: dict[str, list[str]] = {}
        for n in names:
            by_shard.setdefault(self.shard_of[n], []).append(n)
        out = {}
        for shard, shard_names in by_shard.items():
            with safe_open(str(self.root / shard), framework="pt") as st:
                present = set(st.keys())
                for n in shard_names:
                    if n not in present:
                        raise InvalidModelError(
                            f"checkpoint {self.root}: the index puts tensor {n!r} in {shard}, "
                            "which does not hold it (shards and index out of step?)"
                        )
                    # a copy: safetensors' tensors view the mapped file, and one kept tensor
                    # (a norm gain) would keep every page read from that shard resident
                    out[n] = st.get_tensor(n).clone()
        return out


def _random_tensor(name: str, like: torch.Tensor, gen: torch.Generator, std: float, dtype):
    """``N(0, std²)`` for matrices; ones for 1-D weights (norm gains), zeros for biases."""
    if like.dim() >= 2:
        return torch.randn(like.shape, generator=gen).mul_(std).to(dtype)
    fill = 1.0 if name.endswith("weight") else 0.0
    return torch.full(like.shape, fill, dtype=dtype)


def write_random_llama(
    config: Any,
    path: str | os.PathLike,
    seed: int = 0,
    *,
    std: float = 0.02,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random causal LM of ``config`` as a sharded checkpoint; returns the directory.

    Tensor names are the ones transformers uses (``model.embed_tokens.weight``,
    ``model.layers.{i}.self_attn.q_proj.weight``..., ``lm_head.weight``; a tied output head is
    stored once, under the embedding's name, as transformers does). Shard 1 holds everything
    outside the decoder blocks, then one shard per block, so memory holds one block at a time.
    Matrices are ``N(0, std²)``; 1-D weights (norm gains) are ones and biases zeros.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model = meta_skeleton(config)
    prefix, blocks = decoder_blocks(model)
    groups: list[dict[str, torch.Tensor]] = [{}] + [{} for _ in blocks]
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:  # tied weights are stored once
            continue
        seen.add(id(t))
        inside = name.startswith(f"{prefix}.")
        groups[int(name[len(prefix) + 1 :].split(".")[0]) + 1 if inside else 0][name] = t
    gen = torch.Generator().manual_seed(seed)
    n = len(groups)
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        shard = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        tensors = {k: _random_tensor(k, t, gen, std, dtype) for k, t in group.items()}
        save_file(tensors, str(out / shard), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, shard))
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=1, sort_keys=True))
    config.save_pretrained(str(out))
    log.info("wrote a random %s (%d tensors, %.2f GB) to %s in %d shards",
             type(model).__name__, len(weight_map), total / 1e9, out, n)  # fmt: skip
    return out

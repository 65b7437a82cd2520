"""Block-wise GPTQ of a transformers decoder whose weights stay on disk until their block's turn.

The method is GPTQ's reference ``llama.py`` (Frantar et al. 2022), with the weights streamed in
from safetensors as well as the activations streamed through:

1. The model is built on the meta device (it costs no memory). What lies outside the decoder
   blocks (embeddings, final norm, output head, rotary tables) is read from the checkpoint.
2. The calibration token batches run up to block 0, whose inputs are captured: the hidden
   states and the keyword arguments the model gives every block (causal mask, rotary position
   embeddings). The forward stops there.
3. For each block ``i``: its tensors are read from the checkpoint (:class:`CheckpointReader`);
   its Linears are rounded in execution order by :func:`~lowbit.ptq.sequential.round_layers`
   (q/k/v together since they read one tensor, then o_proj, then gate/up, then down_proj), each
   fitted with ``H = 2 Σ XᵀX`` of the inputs it receives with the block's earlier layers already
   quantized, and swapped for :class:`QuantLinear`. The block then runs on the calibration
   hidden states, on its integer kernels, to give block ``i+1`` its inputs. Its float weights
   are released there, before the next block is read.
4. The result is the quantized model (quantized blocks, float embeddings and head), written
   with ``lowbit.save`` when ``out`` is given and read back with ``lowbit.load(out, skeleton)``.

Memory: the quantized model so far, one float block with its Hessians and kept input rows,
and the calibration hidden states (tokens × hidden × 4 bytes); never the float model. Saving
copies the quantized state once more (``lowbit.save`` writes one file).

>>> qmodel = quantize_lazy("tinyllama/", "W4A16-g128", calibration=[ids], out="q/")  # doctest: +SKIP
>>> qmodel2 = lowbit.load("q/", LlamaForCausalLM(config))  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.config import QuantConfig, QuantMode, QuantScheme
from lowbit.errors import CalibrationError, ConfigError, InvalidModelError
from lowbit.nn import QuantLinear, unsupported_reason
from lowbit.pipeline import QuantizationRecord, _group_misfit, resolve_config
from lowbit.ptq.capture import Batch, _Stop, call_model, materialize
from lowbit.ptq.checkpoint import CheckpointReader, decoder_blocks, meta_skeleton
from lowbit.ptq.options import PTQOptions, parse_algorithms
from lowbit.ptq.sequential import round_layers
from lowbit.serialization import save
from lowbit.targeting import scheme_for

__all__ = ["quantize_lazy"]

log = logging.getLogger(__name__)

_OUTSIDE = ("outside the decoder blocks: block-wise GPTQ quantizes the blocks' linear layers "
            "(as GPTQ's llama.py); embeddings and the output head stay float")  # fmt: skip


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, value)


def _materialize(model: nn.Module, root: nn.Module, prefix: str, reader: CheckpointReader,
                 skip: str | None = None) -> None:  # fmt: skip
    """Give ``root``'s meta tensors the checkpoint's values (tied tensors stay tied; tensors
    under ``skip`` stay on meta); non-persistent buffers are computed by transformers' init."""
    outside = lambda n: skip is None or not n.startswith(f"{skip}.")  # noqa: E731
    state = {n: t for n, t in root.state_dict(prefix=prefix, keep_vars=True).items() if outside(n)}
    names: dict[int, list[str]] = {}  # tied tensors: one entry, several names
    for n, t in state.items():
        names.setdefault(id(t), []).append(n)
    chosen = {i: next((n for n in ns if n in reader.shard_of), ns[0]) for i, ns in names.items()}
    values = reader.read(chosen.values())
    for i, ns in names.items():
        like, value = state[ns[0]], values[chosen[i]]
        if tuple(value.shape) != tuple(like.shape):
            raise InvalidModelError(
                f"checkpoint tensor {chosen[i]!r} has shape {list(value.shape)}, the model's "
                f"config expects {list(like.shape)}"
            )
        value = value.to(like.dtype)
        if isinstance(like, nn.Parameter):
            value = nn.Parameter(value, requires_grad=False)
        for n in ns:
            _set_tensor(model, n, value)
    for name, module in root.named_modules(prefix=prefix.rstrip(".")):
        buffers = [b for b, t in module.named_buffers(recurse=False) if t.is_meta]
        if outside(name) and buffers:  # non-persistent (rotary tables): not in the checkpoint
            for b in buffers:
                setattr(module, b, torch.empty_like(getattr(module, b), device="cpu"))
            model._init_weights(module)  # transformers computes them there (as from_pretrained)


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only; a no-op elsewhere).

    glibc serves allocations below its (adaptive, up to 32 MiB) mmap threshold from heaps it
    keeps after ``free``, so a block's transients stay resident. Measured on 6 blocks of hidden
    1024: the resident set grew ~58 MB a block without ``malloc_trim(0)`` after each block,
    18 MB with it, the size of the block's quantized layers.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple | list) else out


def _with_hidden(batch: Batch, hidden: torch.Tensor) -> Batch:
    args, kwargs = batch
    if args and isinstance(args[0], torch.Tensor):
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _first_block_inputs(model: nn.Module, block: nn.Module, batches: list[Batch]) -> list[Batch]:
    """Each batch's ``(args, kwargs)`` at the first block (the forward stops there)."""
    got: list[Batch] = []

    def catch(_m, args, kwargs):
        got.append((args, kwargs))
        raise _Stop

    handle = block.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for i, (args, kwargs) in enumerate(batches):
            try:
                call_model(model, (args, {**kwargs, "use_cache": False}))
            except _Stop:
                continue
            raise CalibrationError(f"calibration batch {i} never reached the decoder blocks")
    finally:
        handle.remove()
    return got


def _check_schemes(config: QuantConfig) -> None:
    for scheme in (config.scheme, *(s for _p, s in config.overrides)):
        if scheme.mode not in (QuantMode.WEIGHT_ONLY, QuantMode.DYNAMIC):
            raise ConfigError(
                f"scheme {scheme.name!r} is {scheme.mode.value}: block-wise quantization "
                "calibrates no activation ranges; use a weight-only (W4A16-g128, W8A16...) or "
                "dynamic (W8A8-dynamic) scheme"
            )


def _plan_block(prefix: str, block: nn.Module, config: QuantConfig,
                record: QuantizationRecord) -> dict[str, tuple[nn.Module, QuantScheme]]:  # fmt: skip
    """``{name in block: (linear, scheme)}``; the reasons of the others go to the record."""
    plan = {}
    for rel, module in block.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        full, scheme = f"{prefix}.{rel}", scheme_for(f"{prefix}.{rel}", config)
        reason = unsupported_reason(module) if scheme is not None else "excluded by patterns"
        reason = reason or _group_misfit(module, scheme)  # the rule lowbit.quantize applies
        if reason is None:
            plan[rel] = (module, scheme)
        else:
            record.skipped[full] = reason
    return plan


def _swap_layers(block: nn.Module, prefix: str, plan: dict[str, Any], codes: dict[str, Any],
                 records: dict[str, Any], record: QuantizationRecord) -> None:  # fmt: skip
    """Replace the planned Linears by QuantLinears (GPTQ's codes where given) and record them."""
    for rel, (module, scheme) in plan.items():
        full = f"{prefix}.{rel}"
        extra = {"qweight": codes[rel]} if rel in codes else {}
        block.set_submodule(rel, QuantLinear.from_float(module, scheme, None, full, **extra))
        record.layers[full] = block.get_submodule(rel).layer_spec()
        if rel in records:
            record.ptq["layers"][full] = records[rel]


def _quantize_block(model: nn.Module, prefix: str, block: nn.Module, batches: list[Batch],
                    reader: CheckpointReader, config: QuantConfig, record: QuantizationRecord,
                    progress: bool | None) -> list[Batch]:  # fmt: skip
    """Read, round and swap one block's Linears; returns the next block's inputs."""
    start = time.perf_counter()
    _materialize(model, block, f"{prefix}.", reader)
    plan = _plan_block(prefix, block, config, record)
    codes, records = {}, {}
    if "gptq" in config.algorithms and plan:
        codes, records = round_layers(block, plan, {}, batches, ("gptq",), config.ptq_options,
                                      progress)  # fmt: skip
    _swap_layers(block, prefix, plan, codes, records, record)
    plan.clear()  # the last references to the float Linears: their weights are released here
    outputs = [_with_hidden(b, _hidden(block(*b[0], **b[1]))) for b in batches]
    _release_freed_memory()
    log.info("%s quantized in %.1f s", prefix, time.perf_counter() - start)
    return outputs


def _read_config(checkpoint: Path) -> Any:
    root = checkpoint.parent if checkpoint.is_file() else checkpoint
    if not (root / "config.json").is_file():
        raise ConfigError(f"{root} has no config.json; pass config=<the model's config>")
    from lowbit.compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # transformers imports torchvision when it is installed
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(root))


def quantize_lazy(
    checkpoint: str | os.PathLike,
    scheme: str | QuantScheme | QuantConfig,
    calibration: Any,
    out: str | os.PathLike | None = None,
    *,
    config: Any = None,
    algorithm: str = "gptq",
    algorithm_options: PTQOptions | Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> nn.Module:
    """Quantize a causal LM block by block, reading its weights lazily from ``checkpoint``.

    Args:
        checkpoint: a directory with ``config.json`` and safetensors weights (one file or
            shards with ``model.safetensors.index.json``), or one ``.safetensors`` file.
        scheme: a weight-only or dynamic preset name (``"W4A16-g128"``, ``"W8A16"``...), a
            :class:`QuantScheme` or a :class:`QuantConfig` (include/exclude/overrides apply to
            full module names such as ``model.layers.0.mlp.down_proj``).
        calibration: token-id batches (``[batch, seq]`` LongTensors, or dicts of model kwargs
            such as ``input_ids``/``attention_mask``); their hidden states stay in memory.
        out: directory to write the lowbit artifact to (``lowbit.save`` format); None: don't.
        config: the transformers config (default: read from the checkpoint's ``config.json``).
        algorithm: ``"gptq"`` (default) or ``"rtn"`` (round to nearest, same streaming).
        algorithm_options: :class:`PTQOptions` (GPTQ's block size, damping, act-order).
        progress: progress bars (default: when attached to a terminal).

    Returns:
        The quantized model: decoder Linears are :class:`QuantLinear`, the rest float, with
        ``lowbit_record`` (per-layer GPTQ errors in ``lowbit_record.ptq["layers"]``).
    """
    if algorithm not in ("gptq", "rtn"):
        raise ConfigError(f"block-wise quantization rounds with 'gptq' or 'rtn', not {algorithm!r}")
    qconfig = resolve_config(scheme).replace(algorithms=parse_algorithms(algorithm))
    if algorithm_options is not None:
        qconfig = qconfig.replace(ptq_options=algorithm_options)
    _check_schemes(qconfig)
    batches = materialize(calibration)  # an empty calibration set is refused here
    reader = CheckpointReader(checkpoint)
    start = time.perf_counter()
    model = meta_skeleton(config if config is not None else _read_config(Path(checkpoint)))
    prefix, blocks = decoder_blocks(model)
    record = QuantizationRecord(config=qconfig)
    if qconfig.algorithms:
        record.ptq = {"algorithms": list(qconfig.algorithms), "rescaled": [], "layers": {},
                      "seconds": {}}  # fmt: skip
    with torch.no_grad():
        _materialize(model, model, "", reader, skip=prefix)
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding) and not name.startswith(prefix):
                record.skipped[name] = _OUTSIDE
        hidden = _first_block_inputs(model, blocks[0], batches)
        bar = tqdm(range(len(blocks)), desc=f"block-wise {algorithm.upper()}", unit="block",
                   disable=(not progress) if progress is not None else None)  # fmt: skip
        for i in bar:
            hidden = _quantize_block(model, f"{prefix}.{i}", blocks[i], hidden, reader, qconfig,
                                     record, progress)  # fmt: skip
    if qconfig.algorithms:
        record.ptq["seconds"]["gptq"] = round(time.perf_counter() - start, 3)
    model.lowbit_record = record
    if out is not None:
        save(model, out)
    return model

"""Peak memory of GPTQ: all-MiniLM-L6-v2 in memory, and a 1.1B LLaMA streamed from disk (issue 10).

Every number comes from a fresh subprocess (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the
peak resident set of that process alone), so one measurement never inherits another's memory.

Part 1, all-MiniLM-L6-v2: the model and its calibration batches loaded (baseline), then
``lowbit.quantize(model, "W4A16-g128", calibration=..., algorithm="gptq")``.

Part 2, a random LLaMA-style model (TinyLlama's shape by default: hidden 2048, MLP 5632,
22 layers, 32 heads, 4 KV heads, vocabulary 32000; 1.1B parameters) written to disk one block
at a time (:func:`lowbit.ptq.checkpoint.write_random_llama`), then quantized block by block
with weights read lazily (:func:`lowbit.ptq.lazy.quantize_lazy`, W4A16-g128 GPTQ) on random
token ids. For comparison: the peak of merely loading the whole float model, and of
``lowbit.load`` of the artifact into a float skeleton.

Usage: ``python -m benchmarks.bench_memory [--part minilm|llama|all] [--layers 22] [--seqs 8]
[--malloc-tuned]`` (about 10 minutes on an idle 2-core machine, 25 with ``--malloc-tuned``, which
repeats the streaming run with glibc's mmap/trim thresholds fixed at 128 KiB). It needs 4.4 GB
of free disk for the float32 checkpoint (written to a temporary directory, removed at the end).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1e9
# glibc: allocations >= 128 KiB get their own mapping (returned at free), heaps trimmed early
MALLOC_TUNED = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _peak() -> float:
    """Peak RSS of this process in GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def _llama_config(args):
    from lowbit.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                       num_hidden_layers=args.layers, num_attention_heads=32,
                       num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
                       tie_word_embeddings=False)  # fmt: skip


def _tokens(args):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32000, (args.seqs, args.seq_len), generator=g)
    return list(ids.split(1))  # one sequence per batch, as GPTQ's reference code feeds them


# -- children: each runs in its own process and prints one JSON line ---------------------------
def child_minilm(args, quantize: bool) -> dict:
    import lowbit
    from lowbit.zoo import load_minilm, reference_sentences

    model, tok = load_minilm()
    enc = lambda s: tok(s, padding=True, truncation=True, max_length=128, return_tensors="pt")  # noqa: E731
    calibration = [dict(enc(reference_sentences(32, offset=i))) for i in range(0, 128, 32)]
    out = {"params": sum(p.numel() for p in model.parameters()),
           "float_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}  # fmt: skip
    if quantize:
        start = time.perf_counter()
        lowbit.quantize(model, "W4A16-g128", calibration=calibration, algorithm="gptq",
                        progress=False)  # fmt: skip
        out["seconds"] = time.perf_counter() - start
    return {**out, "peak_gb": _peak()}


def child_idle(args) -> dict:
    """The baseline: Python, torch, transformers and lowbit imported, the skeleton on meta."""
    from lowbit.ptq.checkpoint import meta_skeleton
    from lowbit.ptq.lazy import quantize_lazy  # noqa: F401

    meta_skeleton(_llama_config(args))
    return {"peak_gb": _peak()}


def child_write(args) -> dict:
    from lowbit.ptq.checkpoint import write_random_llama

    start = time.perf_counter()
    path = write_random_llama(_llama_config(args), args.ckpt, seed=0)
    size = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    return {"seconds": time.perf_counter() - start, "checkpoint_bytes": size, "peak_gb": _peak()}


def child_lazy(args) -> dict:
    from lowbit.ptq.lazy import quantize_lazy
    from lowbit.serialization import artifact_size, save

    start = time.perf_counter()
    model = quantize_lazy(args.ckpt, "W4A16-g128", _tokens(args), None, progress=False)
    seconds = time.perf_counter() - start
    peak_quant = _peak()
    save(model, args.artifact)
    errors = [r["error_after"] / max(r["error_before"], 1e-30)
              for r in model.lowbit_record.ptq["layers"].values()]  # fmt: skip
    return {"seconds": seconds, "save_seconds": time.perf_counter() - start - seconds,
            "peak_quantize_gb": peak_quant, "peak_gb": _peak(),
            "artifact_bytes": artifact_size(args.artifact),
            "layers": len(model.lowbit_record.layers),
            "gptq_over_rtn_error_median": sorted(errors)[len(errors) // 2]}  # fmt: skip


def child_float_load(args) -> dict:
    """The float model as transformers would hold it: every tensor read at once."""
    import torch

    from lowbit.ptq.checkpoint import CheckpointReader, meta_skeleton

    start = time.perf_counter()
    model = meta_skeleton(_llama_config(args))
    reader = CheckpointReader(args.ckpt)
    model.load_state_dict(reader.read(reader.shard_of), strict=False, assign=True)
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        model.model.rotary_emb = type(model.model.rotary_emb)(model.config)
        model(_tokens(args)[0][:, :16])
    return {"params": params, "seconds": time.perf_counter() - start, "peak_gb": _peak()}


def child_quant_load(args) -> dict:
    """lowbit.load of the artifact into a float skeleton (allocated, not initialized)."""
    import torch

    import lowbit
    from lowbit.ptq.checkpoint import meta_skeleton

    start = time.perf_counter()
    skeleton = meta_skeleton(_llama_config(args)).to_empty(device="cpu")
    skeleton.model.rotary_emb = type(skeleton.model.rotary_emb)(skeleton.config)
    model = lowbit.load(args.artifact, skeleton)
    with torch.no_grad():
        logits = model(_tokens(args)[0][:, :16]).logits
    return {"seconds": time.perf_counter() - start, "finite": bool(torch.isfinite(logits).all()),
            "peak_gb": _peak()}  # fmt: skip


CHILDREN = {
    "idle": child_idle,
    "minilm-load": lambda a: child_minilm(a, quantize=False),
    "minilm-gptq": lambda a: child_minilm(a, quantize=True),
    "llama-write": child_write,
    "llama-lazy": child_lazy,
    "llama-float-load": child_float_load,
    "llama-quant-load": child_quant_load,
}


def _run_child(name: str, args, env: dict | None = None, timeout: float = 3600) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--child", name,
           "--layers", str(args.layers), "--hidden", str(args.hidden),
           "--intermediate", str(args.intermediate), "--seqs", str(args.seqs),
           "--seq-len", str(args.seq_len), "--ckpt", str(args.ckpt),
           "--artifact", str(args.artifact)]  # fmt: skip
    # stdout carries the JSON result; stderr (progress log, errors) passes through
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False,
                          env=None if env is None else {**os.environ, **env})  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {done.returncode}); its error is above")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(name, env or "", result, flush=True)
    return result


def run_minilm(args) -> list[dict]:
    from lowbit.measure import format_table

    base, gptq = _run_child("minilm-load", args), _run_child("minilm-gptq", args)
    rows = [
        {"measurement": "MiniLM loaded + calibration batches", "peak RSS GB": f"{base['peak_gb']:.2f}"},
        {"measurement": "same + W4A16-g128 GPTQ (lowbit.quantize)",
         "peak RSS GB": f"{gptq['peak_gb']:.2f}", "seconds": f"{gptq['seconds']:.1f}"},
    ]  # fmt: skip
    print(f"\nall-MiniLM-L6-v2: {base['params'] / 1e6:.1f}M parameters, float32 "
          f"{base['float_bytes'] / GB:.3f} GB; GPTQ adds {gptq['peak_gb'] - base['peak_gb']:.2f} GB "
          "of peak RSS")  # fmt: skip
    print(format_table(rows, ["measurement", "peak RSS GB", "seconds"]), "\n", flush=True)
    return rows


def run_llama(args) -> list[dict]:
    from lowbit.measure import format_table

    print(f"disk: {shutil.disk_usage(args.ckpt.parent).free / GB:.0f} GB free", flush=True)
    idle = _run_child("idle", args)
    w = _run_child("llama-write", args)
    lazy = _run_child("llama-lazy", args)
    tuned = _run_child("llama-lazy", args, env=MALLOC_TUNED) if args.malloc_tuned else None
    flt = _run_child("llama-float-load", args)
    ql = _run_child("llama-quant-load", args)
    rows = [
        {"step": "baseline: torch + transformers imported, meta skeleton",
         "peak RSS GB": idle["peak_gb"]},
        {"step": "write random checkpoint (one shard per block)", "peak RSS GB": w["peak_gb"],
         "seconds": w["seconds"], "size GB": w["checkpoint_bytes"] / GB},
        {"step": "load whole float model (comparison)", "peak RSS GB": flt["peak_gb"],
         "seconds": flt["seconds"], "size GB": w["checkpoint_bytes"] / GB},
        {"step": "block-wise GPTQ W4A16-g128, lazy weights", "peak RSS GB":
         lazy["peak_quantize_gb"], "seconds": lazy["seconds"]},
        {"step": "  + lowbit.save of the artifact", "peak RSS GB": lazy["peak_gb"],
         "seconds": lazy["save_seconds"], "size GB": lazy["artifact_bytes"] / GB},
        *([] if tuned is None else [
            {"step": "block-wise GPTQ, glibc mmap/trim thresholds 128 KiB", "peak RSS GB":
             tuned["peak_quantize_gb"], "seconds": tuned["seconds"]},
            {"step": "  + lowbit.save of the artifact", "peak RSS GB": tuned["peak_gb"],
             "seconds": tuned["save_seconds"], "size GB": tuned["artifact_bytes"] / GB}]),
        {"step": "lowbit.load into a float skeleton + forward", "peak RSS GB": ql["peak_gb"],
         "seconds": ql["seconds"]},
    ]  # fmt: skip
    for r in rows:
        r.update({k: f"{v:.2f}" if k.endswith("GB") else f"{v:.0f}" for k, v in r.items()
                  if isinstance(v, float)})  # fmt: skip
    print(f"\nLLaMA-style, {flt['params'] / 1e9:.3f}B parameters, {args.layers} layers, "
          f"calibration {args.seqs} x {args.seq_len} tokens; {lazy['layers']} layers quantized; "
          f"median GPTQ/RTN layer error {lazy['gptq_over_rtn_error_median']:.3f}; "
          f"load forward finite: {ql['finite']}")  # fmt: skip
    print(format_table(rows, ["step", "peak RSS GB", "seconds", "size GB"]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("minilm", "llama", "all"), default="all")
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--seqs", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--malloc-tuned",
        action="store_true",
        help="also run the lazy GPTQ with glibc's mmap/trim thresholds fixed",
    )
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--artifact", type=Path)
    args = parser.parse_args()
    if args.child:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("lowbit.ptq.lazy").setLevel(logging.INFO)
        print(json.dumps(CHILDREN[args.child](args)))
        return
    from benchmarks.common import machine

    print(f"machine: {machine()}\n", flush=True)
    if args.part in ("minilm", "all"):
        run_minilm(args)
    if args.part in ("llama", "all"):
        work = Path(tempfile.mkdtemp(prefix="lowbit-mem-"))
        args.ckpt, args.artifact = work / "ckpt", work / "artifact"
        try:
            run_llama(args)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

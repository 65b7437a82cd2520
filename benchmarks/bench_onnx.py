"""ONNX export (issue 8): lowbit's int8 models in ONNX Runtime against ONNX Runtime's own quantizer.

For each model, in one run: the float model exported to ONNX; lowbit's W8A8 (static) and
W8A8-dynamic models exported with ``lowbit.export_onnx``; ONNX Runtime's ``quantize_static``
(QDQ, per-channel int8 weights, uint8 activations, min/max calibration on the same batches, after
ORT's recommended ``quant_pre_process``) and ``quantize_dynamic`` on the same float ONNX file.
Latency: medians in ONNX Runtime at batch 1 and a larger batch, all variants timed in interleaved
rounds; lowbit W8A8 is compared with ORT's static model, lowbit W8A8-dynamic with ORT's dynamic
one. Fidelity: top-1 (digits, MNIST-1D), output SQNR vs float (timm models with random
weights), mean cosine of sentence embeddings to float (MiniLM). Parity: each lowbit ONNX model
against lowbit's own PyTorch integer model.

Usage: ``python -m benchmarks.bench_onnx [--models digits mnist1d resnet18 mobilenetv3 minilm]``
(about 10 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import lowbit
from benchmarks.common import machine
from lowbit.export.ort import float_layers, ort_quantize, ort_session
from lowbit.measure.accuracy import sqnr_db
from lowbit.measure.latency import compare_latency
from lowbit.measure.table import format_table


class _Embed(nn.Module):
    """MiniLM as ``(input_ids, attention_mask) -> normalized mean-pooled embedding``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        from lowbit.zoo import sentence_embeddings

        return sentence_embeddings(self.model, {"input_ids": input_ids,
                                                "attention_mask": attention_mask})  # fmt: skip


def _task(name):
    from lowbit.tasks import task_problem

    p = task_problem(name)
    x, y = p.split.x_test, p.split.y_test
    return {"model": p.model, "calib": [(c,) for c in p.calibration], "eval": (x,),
            "labels": y, "batch": 128, "metric": "top-1", "axes": None,
            "classifier": True}  # fmt: skip


def _timm(arch):
    from lowbit.compat import import_timm

    torch.manual_seed(0)
    model = import_timm().create_model(arch, pretrained=False).eval()
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randn(8, 3, 224, 224, generator=g),) for _ in range(4)]
    return {"model": model, "calib": calib, "eval": (torch.randn(8, 3, 224, 224, generator=g),),
            "labels": None, "batch": 8, "metric": "SQNR dB", "axes": None,
            "classifier": True}  # fmt: skip


def _minilm():
    from lowbit.zoo import load_minilm, reference_sentences

    model, tok = load_minilm()

    def enc(sentences):
        b = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
        return (b["input_ids"], b["attention_mask"])

    calib = [enc(reference_sentences(32, offset=i)) for i in range(0, 128, 32)]
    axes = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask")}
    axes["output"] = {0: "batch"}
    return {"model": model, "wrap": _Embed, "calib": calib,
            "eval": enc(reference_sentences(256, offset=128)), "labels": None, "batch": 32,
            "metric": "cosine", "axes": axes, "names": ["input_ids", "attention_mask"]}  # fmt: skip


MODELS = {"digits": lambda: _task("digits"), "mnist1d": lambda: _task("mnist1d"),
          "resnet18": lambda: _timm("resnet18"),
          "mobilenetv3": lambda: _timm("mobilenetv3_large_100"), "minilm": _minilm}  # fmt: skip


def _fidelity(spec, out: np.ndarray, ref: np.ndarray) -> float:
    if spec["metric"] == "top-1":
        return float((out.argmax(1) == spec["labels"].numpy()).mean())
    if spec["metric"] == "cosine":
        a, b = torch.from_numpy(out), torch.from_numpy(ref)
        return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())
    return sqnr_db(torch.from_numpy(ref), torch.from_numpy(out))


def _agreement(spec, a: np.ndarray, b: np.ndarray) -> str:
    if spec["metric"] == "top-1":
        return f"{(a.argmax(1) == b.argmax(1)).mean():.4f} top-1 agreement"
    if spec["metric"] == "cosine":
        cos = torch.nn.functional.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b), -1)
        return f"{float(cos.mean()):.4f} mean cosine"
    return f"{sqnr_db(torch.from_numpy(b), torch.from_numpy(a)):.1f} dB SQNR"


def run_model(name: str, tmp: Path, min_time_s: float) -> list[dict]:
    spec = MODELS[name]()
    wrap = spec.get("wrap", lambda m: m)
    names = spec.get("names", ["input"])
    t0 = time.perf_counter()
    fmodel = wrap(spec["model"]).eval()
    example = spec["calib"][0]
    kw = {"input_names": names, "dynamic_axes": spec["axes"], "calibration": spec["calib"]}
    f_path = lowbit.export_onnx(fmodel, tmp / f"{name}-float.onnx", example, **kw).path
    paths, exports, lmodels = {"float32 (ONNX)": f_path}, {}, {}
    # classifiers: quantized logits (QGemm with uint8 output), as ORT's quantize_static writes
    # them, so that the comparison with it is like for like; lowbit's default keeps outputs
    # float (embeddings and regression heads must not clamp), which MiniLM uses here
    kw["quantize_outputs"] = spec.get("classifier", False)
    for scheme in ("W8A8", "W8A8-dynamic"):
        q = lowbit.quantize(spec["model"], scheme, calibration=spec["calib"])
        lmodels[scheme] = wrap(q).eval()
        exports[scheme] = lowbit.export_onnx(lmodels[scheme], tmp / f"{name}-{scheme}.onnx",
                                             example, **kw)  # fmt: skip
        paths[f"lowbit {scheme}"] = exports[scheme].path
    feeds = [{n: t.numpy() for n, t in zip(names, b, strict=True)} for b in spec["calib"]]
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = tmp / f"{name}-pre.onnx"
        with contextlib.chdir(tmp):  # it writes sym_shape_infer_temp.onnx into the working dir
            quant_pre_process(str(f_path), str(pre))
    except Exception as exc:  # noqa: BLE001 - ORT's pre-processing is best effort
        print(f"{name}: quant_pre_process failed ({exc}); quantizing the raw export")
        pre = f_path
    paths["ORT quantize_static"] = ort_quantize(pre, tmp / f"{name}-ort-s.onnx", "static", feeds)
    paths["ORT quantize_dynamic"] = ort_quantize(pre, tmp / f"{name}-ort-d.onnx", "dynamic")
    print(f"{name}: quantized and exported in {time.perf_counter() - t0:.0f} s", flush=True)
    eval_feed = {n: t.numpy() for n, t in zip(names, spec["eval"], strict=True)}
    with torch.inference_mode():
        ref = fmodel(*spec["eval"]).numpy()
        lowbit_torch = {k: m(*spec["eval"]).numpy() for k, m in lmodels.items()}
    rows, sessions = [], {}
    for variant, path in paths.items():
        sess, ops = ort_session(path)
        sessions[variant] = sess
        out = sess.run(None, eval_feed)[0]
        scheme = variant.removeprefix("lowbit ")
        exp = exports.get(scheme)
        rows.append({"model": name, "variant": variant, "size MiB": path.stat().st_size / 2**20,
                     spec["metric"]: _fidelity(spec, out, ref),
                     "parity": _agreement(spec, out, lowbit_torch[scheme]) if exp else "",
                     "float layers": len(float_layers(ops, list(exp.layers))) if exp else ""})  # fmt: skip
    by_variant = {r["variant"]: r for r in rows}
    for b in sorted({1, spec["batch"]}):
        feed = {n: v[:b] for n, v in eval_feed.items()}
        fns = {v: (lambda s=s, f=feed: s.run(None, f)) for v, s in sessions.items()}
        lat = compare_latency(fns, min_time_s=min_time_s)
        base = lat["float32 (ONNX)"].median_ms
        for v, r in lat.items():
            by_variant[v][f"b{b} ms"] = round(r.median_ms, 3)
            by_variant[v][f"b{b} vs float"] = f"{base / r.median_ms:.2f}x"
        for ours, theirs in (("W8A8", "static"), ("W8A8-dynamic", "dynamic")):
            ratio = lat[f"ORT quantize_{theirs}"].median_ms / lat[f"lowbit {ours}"].median_ms
            by_variant[f"lowbit {ours}"][f"b{b} vs ORT {theirs}"] = f"{ratio:.2f}x"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print(format_table(rows, cols), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--min-time", type=float, default=1.0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            run_model(name, Path(tmp), args.min_time)


if __name__ == "__main__":
    main()

"""Whole-model speed (issue 19): lowbit eager, every ``lowbit.compile`` backend and the peers.

For each model, in one process: float32 eager PyTorch (the baseline of every ratio); lowbit's
W8A8-dynamic and W8A8 models (MiniLM also W8A8 with SmoothQuant) in lowbit's eager runtime and through ``lowbit.compile`` on each
backend (inductor, onnxruntime, openvino); and what a user would pick instead: ONNX Runtime's
``quantize_dynamic`` and ``quantize_static`` (on the float ONNX export, after
``quant_pre_process``), NNCF's int8 on OpenVINO (its defaults: bf16 for float ops on CPUs with
native bf16), and torchao's int8 dynamic-activation config under ``torch.compile``. All variants are
timed in interleaved rounds at batch 1 and at a batch; fidelity is measured on held-out inputs
(top-1 for the demo CNN, cosine of sentence embeddings for MiniLM, SQNR and top-1 agreement with
float for timm models with random weights). ``% BW`` is the fraction of this machine's memory
bandwidth a batch-1 call uses to read the model's weights once (a GEMV bound), ``% int8 peak``
the fraction of the measured int8 GEMM peak a batched call reaches.

Peers are optional (``pip install 'lowbit[bench]'``): a missing one is reported, not fatal.

Usage: ``python -m benchmarks.bench_runtime [--models minilm resnet18 mobilenetv3 digits]``
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import lowbit
from benchmarks.bench_onnx import MODELS
from benchmarks.common import machine
from lowbit.measure.accuracy import sqnr_db
from lowbit.measure.latency import compare_latency
from lowbit.measure.table import format_table

SCHEMES = ("W8A8-dynamic", "W8A8")
BACKENDS = ("inductor", "onnxruntime", "openvino")


def machine_limits() -> dict[str, float]:
    """Measured memory bandwidth (GB/s, a 256 MiB copy) and int8 GEMM peak (GOP/s, _int_mm)."""
    src = torch.empty(2**26, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    bw = compare_latency({"copy": lambda: dst.copy_(src)}, rounds=1, min_time_s=1.0)
    a = torch.randint(-64, 64, (1024, 2048), dtype=torch.int8)
    b = torch.randint(-64, 64, (2048, 2048), dtype=torch.int8)
    mm = compare_latency({"mm": lambda: torch._int_mm(a, b)}, rounds=1, min_time_s=1.0)
    return {"GB/s": 2 * src.numel() * 4 / mm_s(bw["copy"]) / 1e9,
            "int8 GOP/s": 2 * 1024 * 2048 * 2048 / mm_s(mm["mm"]) / 1e9}  # fmt: skip


def mm_s(result) -> float:
    return result.median_ms / 1e3


def _peers(spec, fmodel, tmp: Path, names) -> dict:
    """The peers' quantized models as callables on tuples of tensors (or why not)."""
    peers: dict = {}
    f_path = tmp / "float.onnx"
    kw = {"input_names": names, "dynamic_axes": spec["axes"], "calibration": spec["calib"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lowbit.export_onnx(fmodel, f_path, spec["calib"][0], **kw)
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from lowbit.export.ort import ort_quantize

        pre = tmp / "pre.onnx"
        try:
            with contextlib.chdir(tmp):  # it writes temp files into the working directory
                quant_pre_process(str(f_path), str(pre))
        except Exception as exc:  # noqa: BLE001 - ORT's pre-processing is best effort
            print(f"quant_pre_process failed ({exc}); quantizing the raw export")
            pre = f_path
        feeds = [{n: t.numpy() for n, t in zip(names, b, strict=True)} for b in spec["calib"]]
        for mode in ("dynamic", "static"):
            path = ort_quantize(pre, tmp / f"ort-{mode}.onnx", mode, feeds)
            peers[f"ORT quantize_{mode}"] = _ort(path, names)
    except ImportError as exc:
        peers["ORT quantize_*"] = f"not installed ({exc})"
    peers["NNCF int8 -> OpenVINO"] = _nncf(spec, fmodel)
    peers["torchao int8-dyn + compile"] = _torchao(spec)
    return peers


def _ort(path, names):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda *xs: torch.from_numpy(
        sess.run(None, {n: x.numpy() for n, x in zip(names, xs, strict=True)})[0]
    )


def _nncf(spec, fmodel):
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        return f"not installed ({exc})"
    ov_model = ov.convert_model(fmodel, example_input=spec["calib"][0])
    transformer = spec["metric"] == "cosine"
    kw = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    data = nncf.Dataset(spec["calib"], lambda b: tuple(t.numpy() for t in b))
    q = nncf.quantize(ov_model, data, subset_size=len(spec["calib"]), **kw)
    compiled = ov.Core().compile_model(q, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda *xs: torch.from_numpy(
        request.infer([x.numpy() for x in xs], share_inputs=True)[compiled.outputs[0]]
    )


def _torchao(spec):
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        return f"not installed ({exc})"
    import copy

    wrap = spec.get("wrap", lambda m: m)
    model = copy.deepcopy(spec["model"]).eval()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return torch.compile(wrap(model).eval())


def _fidelity(spec, out: torch.Tensor, ref: torch.Tensor) -> str:
    if spec["metric"] == "top-1":
        return f"top-1 {float((out.argmax(1) == spec['labels']).float().mean()):.4f}"
    if spec["metric"] == "cosine":
        cos = torch.nn.functional.cosine_similarity(out.float(), ref, dim=-1)
        return f"cos {float(cos.mean()):.4f} (min {float(cos.min()):.4f})"
    agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
    return f"{sqnr_db(ref, out.float()):.1f} dB, top-1 agr {agree:.3f}"


def _weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def run_model(name: str, tmp: Path, min_time_s: float, schemes=SCHEMES) -> list[dict]:
    spec = MODELS[name]()
    wrap = spec.get("wrap", lambda m: m)
    names = spec.get("names", ["input"])
    fmodel = wrap(spec["model"]).eval()
    variants: dict = {"float32 eager": fmodel}
    builds: dict[str, float] = {}
    one = tuple(t[:1] for t in spec["eval"])
    if spec["metric"] == "cosine":  # transformers: SmoothQuant is the static W8A8 recipe
        schemes = (*schemes, "W8A8+smoothquant")
    for scheme in schemes:
        t0 = time.perf_counter()
        preset, *algorithm = scheme.split("+")
        q = lowbit.quantize(spec["model"], preset, calibration=spec["calib"],
                            algorithm=algorithm or None)  # fmt: skip
        q = wrap(q).eval()
        builds[f"lowbit {scheme} eager"] = time.perf_counter() - t0
        variants[f"lowbit {scheme} eager"] = q
        for backend in BACKENDS:
            label = f"lowbit {scheme} -> {backend}"
            try:
                c = lowbit.compile(q, one, backend=backend, calibration=spec["calib"],
                                   cache_dir=tmp / "cache")  # fmt: skip
            except lowbit.BackendUnavailableError as exc:
                variants[label] = str(exc)
                continue
            variants[label], builds[label] = c, c.compile_s
    variants.update(_peers(spec, fmodel, tmp, names))
    print(f"{name}: {len(variants)} variants built", flush=True)
    rows = {v: {"model": name, "variant": v} for v in variants}
    live = {v: m for v, m in variants.items() if not isinstance(m, str)}
    for v, m in variants.items():
        if isinstance(m, str):
            rows[v]["fidelity"] = m
    with torch.inference_mode():
        ref = fmodel(*spec["eval"])
        for v, m in live.items():
            rows[v]["fidelity"] = _fidelity(spec, m(*spec["eval"]), ref)
            rows[v]["build s"] = round(builds.get(v, 0.0), 1) if v in builds else ""
    limits, wbytes = machine_limits(), _weight_bytes(fmodel)
    for b in (1, spec["batch"]):
        xs = tuple(t[:b] for t in spec["eval"])
        with FlopCounterMode(display=False) as fc:
            fmodel(*xs)
        with torch.inference_mode():
            lat = compare_latency({v: (lambda m=m, xs=xs: m(*xs)) for v, m in live.items()},
                                  rounds=5, min_time_s=min_time_s)  # fmt: skip
        base = lat["float32 eager"].median_ms
        for v, r in lat.items():
            rows[v][f"b{b} ms"] = round(r.median_ms, 3)
            rows[v][f"b{b} vs float"] = f"{base / r.median_ms:.2f}x"
            s = r.median_ms / 1e3
            if b == 1:  # int8 weights (1 byte each) for every quantized variant
                w = wbytes if v == "float32 eager" else wbytes / 4
                rows[v]["b1 % BW"] = f"{100 * w / limits['GB/s'] / 1e9 / s:.0f}"
            else:
                rows[v][f"b{b} % int8 peak"] = f"{100 * fc.get_total_flops() / s / 1e9 / limits['int8 GOP/s']:.0f}"  # noqa: E501
    print(f"machine limits: {limits['GB/s']:.1f} GB/s copy, {limits['int8 GOP/s']:.0f} "
          f"int8 GOP/s (_int_mm 1024x2048x2048); weights {wbytes / 1e6:.1f} MB fp32")  # fmt: skip
    out = list(rows.values())
    cols = list(dict.fromkeys(k for r in out for k in r))
    print(format_table(out, cols), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", default=["minilm", "resnet18", "mobilenetv3", "digits"])
    p.add_argument("--schemes", nargs="*", default=list(SCHEMES))
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of timing per variant")
    args = p.parse_args()
    print(machine())
    torch.manual_seed(0)
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            run_model(name, Path(tmp), args.min_time, tuple(args.schemes))


if __name__ == "__main__":
    main()

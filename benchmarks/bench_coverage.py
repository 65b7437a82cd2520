"""timm coverage (issue 9): every architecture family quantized and run (W8A8, W4A16, -g128).

For each model (random weights, eval mode, its default input size): the float output on 2
random images; ``lowbit.quantize`` with W8A8 (2 calibration batches of 2 images) and with
W4A16 (weights only, per channel) and W4A16-g128 (groups of 128); the quantized model's output SQNR against float; the layers
left in float with the reason (``model.lowbit_record.skipped``). A model that raises counts as a
failure and its error is written in the table. Writes ``benchmarks/COVERAGE.md``.

Usage: ``python -m benchmarks.bench_coverage [--models resnet18 ...] [--out FILE]`` (about 15
minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

import lowbit
from benchmarks.common import machine
from lowbit.measure.accuracy import sqnr_db
from lowbit.measure.table import format_table

# family -> timm model names (small variants: random weights, speed and coverage only)
FAMILIES = {
    "ResNet": ["resnet18", "resnet10t", "resnet50d"],
    "ResNeXt": ["resnext26ts"],
    "Res2Net": ["res2net50_26w_4s"],
    "RegNet": ["regnetx_002", "regnety_002"],
    "MobileNetV2": ["mobilenetv2_050"],
    "MobileNetV3": ["mobilenetv3_small_050", "mobilenetv3_large_100"],
    "EfficientNet": ["efficientnet_b0", "tf_efficientnet_lite0"],
    "GhostNet": ["ghostnet_100"],
    "MnasNet / LCNet": ["mnasnet_small", "lcnet_050"],
    "RepVGG": ["repvgg_a0"],
    "DenseNet": ["densenet121"],
    "DLA": ["dla34"],
    "CSPNet": ["cspresnet50"],
    "ReXNet": ["rexnet_100"],
    "ConvNeXt": ["convnext_atto"],
    "ViT": ["vit_tiny_patch16_224"],
    "DeiT": ["deit_tiny_patch16_224"],
    "Swin": ["swin_tiny_patch4_window7_224"],
    "CaiT": ["cait_xxs24_224"],
    "PiT": ["pit_ti_224"],
    "LeViT": ["levit_128s"],
    "MLP-Mixer": ["mixer_s16_224"],
    "ResMLP": ["resmlp_12_224"],
    "PoolFormer": ["poolformer_s12"],
    "EdgeNeXt": ["edgenext_xx_small"],
    "MobileViT": ["mobilevit_xxs"],
    "EfficientFormer": ["efficientformer_l1"],
    "FastViT": ["fastvit_t8"],
    "Visformer": ["visformer_tiny"],
    "CoaT": ["coat_lite_tiny"],
}
SCHEMES = ("W8A8", "W4A16", "W4A16-g128")


def _input(model, batch: int, seed: int) -> torch.Tensor:
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(seed))


def _reasons(skipped: dict[str, str]) -> str:
    """``"3 x reason; 1 x other"``, most common first."""
    counts = Counter(r.split(";")[0] for r in skipped.values())  # the reason, not the advice
    return _compact("; ".join(f"{n} x {r}" for r, n in counts.most_common()))


def _compact(why: str) -> str:
    """Merge ``"3 x ... row length 192; 1 x ... row length 27"`` into one entry per reason,
    the numbers that differ listed once: ``"4 x ... row length (192, 27)"``."""
    merged: dict[str, tuple[int, list[str]]] = {}
    for part in filter(None, (p.strip() for p in why.split("; "))):
        n, _, reason = part.partition(" x ")
        lengths = re.findall(r"row length (\d+)", reason)
        key = re.sub(r"row length \d+", "row length", reason)
        count, seen = merged.get(key, (0, []))
        merged[key] = (count + int(n), seen + [v for v in lengths if v not in seen])
    return "; ".join(f"{n} x {k}" + (f" ({', '.join(v)})" if v else "")
                     for k, (n, v) in merged.items())  # fmt: skip


def _random_head_(model) -> None:
    """timm zero-initializes some classifiers (MLP-Mixer, ResMLP): their logits are all zero and
    SQNR would be undefined; give such heads random weights like the rest of the model."""
    heads = model.get_classifier()  # LeViT: a (head, distillation head) tuple
    with torch.no_grad():
        for head in heads if isinstance(heads, tuple | list) else (heads,):
            for p in head.parameters() if isinstance(head, torch.nn.Module) else ():
                if p.dim() >= 2 and not p.any():
                    torch.nn.init.normal_(p, std=0.02)


def run_model(timm, family: str, arch: str) -> list[dict]:
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    _random_head_(model)
    x = _input(model, 2, seed=1)
    calib = [_input(model, 2, seed=s) for s in (2, 3)]
    with torch.inference_mode():
        ref = model(x)
    rows = []
    for scheme in SCHEMES:
        row = {"family": family, "model": arch, "scheme": scheme,
               "params M": sum(p.numel() for p in model.parameters()) / 1e6}  # fmt: skip
        t0 = time.perf_counter()
        try:
            q = lowbit.quantize(model, scheme, calibration=calib, progress=False)
            with torch.inference_mode():
                out = q(x)
            rec = q.lowbit_record
            row.update({"status": "ok", "SQNR dB": round(sqnr_db(ref, out), 1),
                        "quantized": len(rec.layers), "float": len(rec.skipped),
                        "why float": _reasons(rec.skipped)})  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a coverage table records every failure
            traceback.print_exc()
            row.update({"status": "FAILED", "why float": f"{type(exc).__name__}: {exc}"[:160]})
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(format_table([row], list(row)), flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for scheme in SCHEMES:
        ok = [r for r in rows if r["scheme"] == scheme and r["status"] == "ok"]
        total = sum(r["scheme"] == scheme for r in rows)
        out.append({"scheme": scheme, "models run": f"{len(ok)} / {total}",
                    "median SQNR dB": round(statistics.median(r["SQNR dB"] for r in ok), 1),
                    "min SQNR dB": min(r["SQNR dB"] for r in ok),
                    "models with float layers": sum(r["float"] > 0 for r in ok)})  # fmt: skip
    return out


def _compact_file(path: Path) -> None:
    """Re-render the per-model table of an existing coverage file with compact reasons."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| family"))
    cols = [c.strip() for c in lines[header].strip("|").split("|")]
    rows = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append(dict(zip(cols, cells, strict=True)) | {"why float": _compact(cells[-1])})
    end = header + 2 + len(rows)
    text = (
        "\n".join(lines[:header]) + "\n" + format_table(rows, cols) + "\n" + "\n".join(lines[end:])
    )
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", help="timm names (default: the FAMILIES list)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("COVERAGE.md")))
    parser.add_argument(
        "--compact",
        action="store_true",
        help="only rewrite the 'why float' column of an existing --out file",
    )
    args = parser.parse_args()
    if args.compact:
        _compact_file(Path(args.out))
        return
    warnings.simplefilter("ignore")
    from lowbit.compat import import_timm

    timm = import_timm()
    todo = [(f, a) for f, archs in FAMILIES.items() for a in archs]
    if args.models:
        todo = [(next((f for f, a in FAMILIES.items() if m in a), "other"), m) for m in args.models]
    rows = []
    for family, arch in todo:
        rows += run_model(timm, family, arch)
    cols = ["family", "model", "params M", "scheme", "status", "SQNR dB", "quantized", "float",
            "seconds", "why float"]  # fmt: skip
    text = (
        "# timm coverage (`python -m benchmarks.bench_coverage`)\n\n"
        f"{machine()}, timm {timm.__version__}. Random weights, default input size, 2 images; "
        "W8A8: static int8 activations calibrated on 2 batches of 2 random images; W4A16: 4-bit "
        "weights, one scale per output channel; W4A16-g128: one scale per group of 128 weights "
        "(layers whose rows 128 does not divide stay float, listed). Classifier heads that timm "
        "zero-initializes (MLP-Mixer, ResMLP) get random weights too. SQNR: quantized vs float output on the same images (random "
        "weights make it a fidelity check, not an accuracy figure). `float`: layers left in "
        "float, with the reason.\n\n"
        + format_table(summary(rows), list(summary(rows)[0]))
        + "\n\n"
        + format_table(rows, cols)
        + "\n"
    )
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

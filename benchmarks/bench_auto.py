"""Mixed precision and the accuracy-driven search, measured (issue 6).

Part 1, ``lowbit.auto`` with a 5-minute budget on the digits CNN, the MNIST-1D CNN (metric: test
accuracy, ``max_drop`` one point) and all-MiniLM-L6-v2 (metric: mean cosine of sentence
embeddings to float32, constraint cos >= 0.99): the chosen model's metric, bits per weight and
size against uniform W8A16, the models tried and the seconds spent. Plots of the digits and
MiniLM searches go to ``benchmarks/figures/``.

Part 2, equal bits: uniform 4- and 3-bit weights (``W4A16``, ``W3A16`` per channel; for MiniLM
also the group-128 presets) against the allocation :func:`lowbit.analysis.allocate` finds for
the same measured bits per weight (no error correction on either side). CNNs: mean of
``--seeds`` trained models (test sets of 540/1000 images: one seed moves in steps of
0.19/0.1 points).

Usage: ``python -m benchmarks.bench_auto [--seeds 2] [--part auto|equal|all] [--budget 300]``.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import torch

import lowbit
from benchmarks.common import machine
from lowbit.analysis import allocate, analyze
from lowbit.measure import cosine_similarity, format_table, layer_weight_bytes
from lowbit.tasks import TASKS, hold_out, train

FIGURES = Path(__file__).resolve().parent / "figures"


def cnn_problem(task_name: str, seed: int):
    task = TASKS[task_name]
    split, val = hold_out(task.load(seed=seed), task.validation, seed=seed)
    torch.manual_seed(seed)
    model = train(task.make_model(), split, task.epochs, seed=seed)
    calibration = list(split.x_train[:512].split(128))

    def top1(x, y):
        def accuracy(m) -> float:
            with torch.inference_mode():
                return float((m(x).argmax(1) == y).float().mean())

        return accuracy

    # auto chooses on the validation split held out of training; the test set reports
    return model, calibration, top1(val.x_train, val.y_train), top1(split.x_test, split.y_test)


def minilm_problem(n_eval: int = 256, n_calib: int = 128):
    from lowbit.zoo import load_minilm, reference_sentences, sentence_embeddings

    model, tok = load_minilm()
    enc = lambda s: dict(tok(s, padding=True, truncation=True, max_length=128, return_tensors="pt"))  # noqa: E731
    calibration = [enc(reference_sentences(32, offset=i)) for i in range(0, n_calib, 32)]
    eval_s = reference_sentences(n_eval, offset=n_calib)
    batches = [enc(eval_s[i : i + 32]) for i in range(0, n_eval, 32)]
    with torch.inference_mode():
        ref = torch.cat([sentence_embeddings(model, b) for b in batches])

    def mean_cosine(m) -> float:
        with torch.inference_mode():
            out = torch.cat([sentence_embeddings(m, b) for b in batches])
        return float(cosine_similarity(out, ref).mean())

    return model, calibration, mean_cosine, None  # pretrained: no split to hold out


def run_auto(name: str, problem, budget: float) -> dict:
    model, calibration, evaluate, test = problem
    res = lowbit.auto(model, calibration, evaluate, max_drop=0.01, time_budget=budget)
    w8 = next(c for c in res.candidates if c.name == "uniform W8A16")
    FIGURES.mkdir(exist_ok=True)
    res.plot(FIGURES / f"auto-{name}-pareto.png")
    res.report.plot(FIGURES / f"auto-{name}-sensitivity.png")
    print(res.table(), flush=True)
    return {
        "model": name,
        "float": f"{res.baseline_metric:.4f}",
        "chosen": res.chosen.name,
        "metric": f"{res.metric:.4f}",
        "bits/weight": f"{res.chosen.bits_per_weight:.2f}",
        "W8A16 bits/weight": f"{w8.bits_per_weight:.2f}",
        "size vs W8A16": f"{res.chosen.size_bytes / w8.size_bytes:.2f}x",
        "W8A16 metric": f"{w8.metric:.4f}",
        "test (float / chosen)": "" if test is None else f"{test(model):.4f} / {test(res.model):.4f}",
        "models tried": len(res.candidates),
        "seconds": f"{res.seconds:.0f}",
    }


def equal_bits(problem, presets) -> dict[str, tuple[float, float, float, float]]:
    """``{preset: (bits, uniform metric, mixed bits, mixed metric)}`` for one trained model."""
    model, calibration, evaluate, _test = problem
    report = analyze(model, calibration[:1], progress=False)
    n = sum(i.weights for i in report.layers.values())
    out = {}
    for preset in presets:
        uniform = lowbit.quantize(model, preset, progress=False)
        bits = 8 * sum(layer_weight_bytes(uniform.get_submodule(m)) for m in report.layers) / n
        alloc = allocate(report, bits_per_weight=bits)
        mixed = lowbit.quantize(model, alloc.config, progress=False)
        out[preset] = (bits, evaluate(uniform), alloc.bits_per_weight, evaluate(mixed))
        print(preset, out[preset], alloc.choice, flush=True)
    return out


def run_equal(name: str, problems, presets) -> list[dict]:
    per_seed = [equal_bits(p, presets) for p in problems]
    rows = []
    for preset in presets:
        vals = [r[preset] for r in per_seed]
        mean = lambda i, vals=vals: statistics.mean(v[i] for v in vals)  # noqa: E731
        rows.append({
            "model": name, "uniform": preset, "bits/weight": f"{mean(0):.2f}",
            "uniform metric": f"{mean(1):.4f}", "mixed bits/weight": f"{mean(2):.2f}",
            "mixed metric": f"{mean(3):.4f}", "mixed - uniform": f"{mean(3) - mean(1):+.4f}",
            "seeds": len(vals),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--part", choices=("auto", "equal", "all"), default="all")
    parser.add_argument("--budget", type=float, default=300.0, help="auto's time budget, s")
    parser.add_argument("--models", nargs="+", default=["digits", "mnist1d", "minilm"])
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)  # reference-path notices of low-bit layers
    print(f"machine: {machine()}\n")
    make = lambda m, s: minilm_problem() if m == "minilm" else cnn_problem(m, s)  # noqa: E731
    if args.part in ("auto", "all"):
        rows = [run_auto(m, make(m, 0), args.budget) for m in args.models]
        print(format_table(rows, list(rows[0])), "\n", flush=True)
    if args.part in ("equal", "all"):
        rows = []
        for m in args.models:
            seeds = 1 if m == "minilm" else args.seeds  # pretrained: one model
            presets = ["W4A16", "W3A16"] + (["W4A16-g128", "W3A16-g128"] if m == "minilm" else [])
            rows += run_equal(m, [make(m, s) for s in range(seeds)], presets)
        print(format_table(rows, list(rows[0])), flush=True)


if __name__ == "__main__":
    main()

"""Post-training error correction, side by side (issue 5).

Part 1, the demo CNNs (digits, MNIST-1D) at W4A8 and W3A8: test accuracy after round-to-nearest
(RTN), CLE + bias correction, AdaRound and GPTQ, averaged over ``--seeds`` trained models (each
test set has 540/1000 images, so one seed moves in steps of 0.19/0.1 points), with the share of
RTN's accuracy loss each method recovers and the seconds it took to quantize.

Part 2, all-MiniLM-L6-v2 (real weights): mean cosine of sentence embeddings to float32 for
weight-only 4-bit (group 128, per channel) and 3-bit (group 128) with RTN, AWQ, GPTQ and
AWQ + GPTQ; and static W8A8 with and without SmoothQuant. Seconds to quantize included.

Usage: ``python -m benchmarks.bench_ptq [--seeds 3] [--part cnn|minilm|all]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import lowbit
from benchmarks.common import machine
from lowbit.demo import layers_left_float
from lowbit.measure import cosine_similarity, format_table
from lowbit.tasks import TASKS, train

CNN_METHODS = {
    "RTN": None,
    "CLE + bias corr.": ["cle", "bias_correction"],
    "AdaRound": ["adaround"],
    "CLE + AdaRound + BC": ["cle", "adaround", "bias_correction"],
    "GPTQ": ["gptq"],
}
MINILM_METHODS = {"RTN": None, "AWQ": ["awq"], "GPTQ": ["gptq"], "AWQ + GPTQ": ["awq", "gptq"]}


def _accuracy(model, split) -> float:
    with torch.inference_mode():
        return float((model(split.x_test).argmax(1) == split.y_test).float().mean()) * 100


def run_cnn(seeds: int, schemes=("W4A8", "W3A8")) -> list[dict]:
    rows = []
    for task_name in ("digits", "mnist1d"):
        task = TASKS[task_name]
        acc: dict[tuple[str, str], list[float]] = {}
        secs: dict[tuple[str, str], list[float]] = {}
        floats, left = [], {}
        for seed in range(seeds):
            split = task.load(seed=seed)
            torch.manual_seed(seed)
            model = train(task.make_model(), split, epochs=task.epochs, seed=seed)
            floats.append(_accuracy(model, split))
            calibration = list(split.x_train[:512].split(64))
            for scheme in schemes:
                for label, algo in CNN_METHODS.items():
                    start = time.perf_counter()
                    q = lowbit.quantize(model, scheme, calibration=calibration, algorithm=algo,
                                        progress=False)  # fmt: skip
                    secs.setdefault((scheme, label), []).append(time.perf_counter() - start)
                    acc.setdefault((scheme, label), []).append(_accuracy(q, split))
                    left[(scheme, label)] = layers_left_float(q)
                    print(task_name, seed, scheme, label, acc[(scheme, label)][-1],
                          f"{secs[(scheme, label)][-1]:.1f}s", flush=True)  # fmt: skip
        f = statistics.mean(floats)
        for scheme in schemes:
            rtn_loss = f - statistics.mean(acc[(scheme, "RTN")])
            for label in CNN_METHODS:
                a = acc[(scheme, label)]
                loss = f - statistics.mean(a)
                rows.append({
                    "task": task_name, "scheme": scheme, "method": label,
                    "layers left float": left[(scheme, label)],
                    "float %": f"{f:.2f}", "top-1 %": f"{statistics.mean(a):.2f}",
                    "per seed": " ".join(f"{v:.1f}" for v in a),
                    "drop": f"{loss:.2f}",
                    "RTN loss recovered": "-" if label == "RTN" or rtn_loss <= 0
                    else f"{(rtn_loss - loss) / rtn_loss:.0%}",
                    "quantize s": f"{statistics.mean(secs[(scheme, label)]):.1f}",
                })  # fmt: skip
    return rows


def run_minilm(n_eval=320, n_calib=128) -> list[dict]:
    from lowbit.zoo import load_minilm, reference_sentences, sentence_embeddings

    model, tok = load_minilm()
    enc = lambda s: tok(s, padding=True, truncation=True, max_length=128, return_tensors="pt")  # noqa: E731
    eval_s = reference_sentences(n_eval, offset=n_calib)
    calibration = [dict(enc(reference_sentences(32, offset=i))) for i in range(0, n_calib, 32)]
    batches = [enc(eval_s[i : i + 32]) for i in range(0, n_eval, 32)]
    with torch.inference_mode():
        ref = torch.cat([sentence_embeddings(model, b) for b in batches])
    runs = [(s, label, algo) for s in ("W4A16-g128", "W4A16", "W3A16-g128")
            for label, algo in MINILM_METHODS.items()]  # fmt: skip
    runs += [("W8A8", "RTN", None), ("W8A8", "SmoothQuant (alpha searched)", ["smoothquant"])]
    rows = []
    for scheme, label, algo in runs:
        start = time.perf_counter()
        q = lowbit.quantize(model, scheme, calibration=calibration, algorithm=algo, progress=False)
        seconds = time.perf_counter() - start
        with torch.inference_mode():
            cos = cosine_similarity(torch.cat([sentence_embeddings(q, b) for b in batches]), ref)
        rows.append({"scheme": scheme, "method": label, "layers left float": layers_left_float(q),
                     "cos mean": f"{cos.mean():.4f}",
                     "cos min": f"{cos.min():.4f}", "quantize s": f"{seconds:.1f}"})  # fmt: skip
        print(rows[-1], flush=True)  # progress: the table comes at the end
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--part", choices=("cnn", "minilm", "all"), default="all")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)  # reference-path notices of low-bit layers
    print(f"machine: {machine()}\n")
    if args.part in ("cnn", "all"):
        rows = run_cnn(args.seeds)
        print(format_table(rows, list(rows[0])), "\n", flush=True)
    if args.part in ("minilm", "all"):
        rows = run_minilm()
        print(format_table(rows, list(rows[0])), flush=True)


if __name__ == "__main__":
    main()

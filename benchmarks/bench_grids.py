"""4-bit grids compared at equal scale granularity on all-MiniLM-L6-v2 (real weights, offline).

Uniform (asymmetric uint4), NF4 (normal-float quantiles) and a k-means codebook of 16 values,
each with per-output-channel scales, group-128 and group-64 scales. Reported per variant:
weight SQNR over every Linear layer, sentence-embedding cosine to float32 on real sentences,
and storage bits per weight read back from the saved artifact. This is the check that fitting
the grid to the weight distribution beats a uniform grid at the same storage.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch import nn

import lowbit
from benchmarks.common import machine
from lowbit.demo import layers_left_float
from lowbit.measure import bits_per_weight, cosine_similarity, format_table, sqnr_db
from lowbit.zoo import load_minilm, reference_sentences, sentence_embeddings

# (label, format, granularity, symmetric); kmeans16 per_tensor = one codebook a layer, no scales
VARIANTS = [
    ("uniform uint4, per channel", "uint4", "per_channel", False),
    ("NF4, per channel", "nf4", "per_channel", True),
    ("k-means 16, per layer (no scales)", "kmeans16", "per_tensor", True),
    ("uniform uint4, g128", "uint4", "per_group:128", False),
    ("NF4, g128", "nf4", "per_group:128", True),
    ("k-means 16 over g128-scaled weights", "kmeans16", "per_group:128", True),
    ("uniform uint4, g64", "uint4", "per_group:64", False),
    ("NF4, g64 (preset NF4)", "nf4", "per_group:64", True),
    ("k-means 16 over g64-scaled weights", "kmeans16", "per_group:64", True),
]


def run(n_eval: int = 320):
    model, tok = load_minilm()
    sentences = reference_sentences(n_eval, offset=128)
    batches = [
        tok(sentences[i : i + 32], padding=True, truncation=True, max_length=128,
            return_tensors="pt")
        for i in range(0, n_eval, 32)
    ]  # fmt: skip
    with torch.inference_mode():
        ref = torch.cat([sentence_embeddings(model, b) for b in batches])
    rows = []
    for label, fmt, gran, sym in VARIANTS:
        weight = lowbit.TensorQuantSpec(fmt, gran, symmetric=sym)
        scheme = lowbit.QuantScheme(label, "weight_only", weight=weight, compute_dtype="bf16")
        q = lowbit.quantize(model, scheme)
        with torch.inference_mode():
            cos = cosine_similarity(torch.cat([sentence_embeddings(q, b) for b in batches]), ref)
        with tempfile.TemporaryDirectory() as tmp:
            bits = bits_per_weight(lowbit.save(q, tmp))
        rows.append({
            "variant": label, "layers left float": layers_left_float(q), "bits/w": bits,
            "weight SQNR dB": _weight_sqnr(model, q),
            "cos mean": f"{cos.mean():.4f}", "cos min": f"{cos.min():.4f}",
        })  # fmt: skip
    return rows


def _weight_sqnr(model: nn.Module, q: nn.Module) -> float:
    """SQNR of all Linear weights together (embeddings excluded): ``10 log10(Σw² / Σ(w-ŵ)²)``."""
    originals, approx = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            originals.append(module.weight.detach().reshape(-1))
            approx.append(q.get_submodule(name).dequantized_weight().reshape(-1))
    return float(sqnr_db(torch.cat(originals), torch.cat(approx)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n-eval", type=int, default=320)
    args = p.parse_args()
    print(machine())
    cols = ["variant", "layers left float", "bits/w", "weight SQNR dB", "cos mean", "cos min"]
    print(format_table(run(args.n_eval), cols))


if __name__ == "__main__":
    main()

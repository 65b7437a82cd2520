"""A GPT-2-style language model from its config: quantize, generate, save, reload (one command).

    .venv/bin/python examples/gpt2_generate.py                     # about 30 s on 2 cores
    .venv/bin/python examples/gpt2_generate.py --layers 12 --width 768   # GPT-2 small's shape

No weights can be downloaded here, so the model has random weights: the generated text is
noise, but everything a user of a pretrained checkpoint relies on is exercised. GPT-2's
projections are ``Conv1D`` layers (a Linear with a transposed weight); lowbit rewrites them as
``nn.Linear`` (exactly) and quantizes them. For W8A8 (static, calibrated on 4 random token
batches) and W4A16-g128 (4-bit weights): logits SQNR against float, greedy-decoding agreement
with float over 32 new tokens, artifact size, and a save -> load into a model built from the
config alone -> identical logits check.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import lowbit
from lowbit.compat import ensure_torchvision_importable
from lowbit.measure import format_table, sqnr_db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    ensure_torchvision_importable()  # transformers imports torchvision when it is installed
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=args.width // 64,
                        vocab_size=8192, bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(1, 8192, (4, 64), generator=g) for _ in range(4)]
    prompt, probe = torch.randint(1, 8192, (1, 8), generator=g), calib[0]
    gen = dict(max_new_tokens=32, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref_tokens, ref_logits = model.generate(prompt, **gen), model(probe).logits
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lowbit.save(model, Path(tmp) / "float32")
        for scheme in ("float32", "W8A8", "W4A16-g128"):
            q = model if scheme == "float32" else lowbit.quantize(model, scheme, calibration=calib)
            out = Path(tmp) / scheme
            if scheme != "float32":
                lowbit.save(q, out)
                loaded = lowbit.load(out, GPT2LMHeadModel(config))  # config + artifact only
            with torch.no_grad():
                tokens, logits = q.generate(prompt, **gen), q(probe).logits
                same = scheme == "float32" or torch.equal(loaded(probe).logits, logits)
            rows.append({"variant": scheme,
                         "size KiB": sum(f.stat().st_size for f in out.iterdir()) / 1024,
                         "logits SQNR dB": "-" if scheme == "float32" else sqnr_db(ref_logits, logits),
                         "greedy tokens = float": (tokens == ref_tokens).float().mean().item(),
                         "reload identical": same})  # fmt: skip
    print(format_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()

"""``lowbit auto``: the accuracy-driven search from the command line.

    lowbit auto --task digits --out auto-digits/                  the demo CNN, test accuracy
    lowbit auto MODEL --weights W --calib X --evaluate mod:fn --out DIR

``--evaluate`` names a function ``fn(model) -> float`` (higher is better), resolved like
``MODEL``. The output directory receives the chosen model (``model/``, a lowbit artifact), its
config (``config.json``), every candidate and the Pareto front (``auto.json``), the sensitivity
table (``sensitivity.json``) and the two plots (``pareto.png``, ``sensitivity.png``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lowbit
from lowbit.errors import LowbitError
from lowbit.search.auto import OBJECTIVES
from lowbit.tasks import add_model_arguments, task_problem

__all__ = ["add_parser", "user_problem"]


def add_parser(sub) -> None:
    p = sub.add_parser("auto", help="search the smallest/fastest model within --max-drop")
    add_model_arguments(p, "calibration inputs [N, ...] for MODEL")
    p.add_argument("--evaluate", help="'package.module:fn' or 'file.py:fn', fn(model) -> float")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-drop", type=float, default=0.01, help="absolute, in metric units")
    p.add_argument("--objective", choices=OBJECTIVES, default="size")
    p.add_argument("--time-budget", type=float, default=300.0, help="seconds (default 300)")
    p.add_argument("--candidates", nargs="+", help="presets, most to fewest bits")
    p.add_argument("--refine", nargs="*", default=["gptq"], help="algorithms at failed budgets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_auto)


def user_problem(args: argparse.Namespace):
    """(model, calibration batches, evaluate) from MODEL, --weights, --calib, --evaluate."""
    from lowbit.cli import _single_tensor, load_factory, load_model, load_tensor_file

    if not (args.model and args.calib and args.evaluate):
        raise LowbitError("lowbit auto needs MODEL, --calib and --evaluate (or --task NAME)")
    model = load_model(args.model, args.weights)
    data = _single_tensor(load_tensor_file(args.calib), args.calib)
    return model, list(data.float().split(args.batch_size)), load_factory(args.evaluate)


def cmd_auto(args: argparse.Namespace) -> int:
    if args.task and args.model:
        raise LowbitError("give either MODEL or --task, not both")
    if args.task:
        print(f"training the {args.task} demo model (seed {args.seed})...", flush=True)
        p = task_problem(args.task, args.seed, args.batch_size)
        # choose on the validation split held out of training; the test set reports the choice
        model, calibration, evaluate = p.model, p.calibration, p.validate or p.evaluate
    else:
        p = None
        model, calibration, evaluate = user_problem(args)
    result = lowbit.auto(
        model,
        calibration,
        evaluate,
        max_drop=args.max_drop,
        objective=args.objective,
        time_budget=args.time_budget,
        candidates=args.candidates,
        refine=tuple(args.refine or ()),
        progress=True,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lowbit.save(result.model, out / "model")
    if result.config is not None:
        (out / "config.json").write_text(result.config.to_json(), encoding="utf-8")
    result.save(out / "auto.json")
    result.report.save(out / "sensitivity.json")
    result.plot(out / "pareto.png")
    result.report.plot(out / "sensitivity.png")
    print(result.report.table())
    print(result.table())
    print(
        f"chosen: {result.chosen.name}: metric {result.metric:.4f} (float "
        f"{result.baseline_metric:.4f}, allowed drop {args.max_drop}), "
        f"{result.chosen.bits_per_weight:.2f} bits/weight, {result.chosen.size_bytes:,} bytes; "
        f"{len(result.candidates)} models tried in {result.seconds:.0f} s. Wrote {out}/"
    )
    if p is not None and p.validate is not None:
        print(f"chosen on the validation split; on the test set: {p.evaluate(result.model):.4f} "
              f"(float {p.evaluate(model):.4f})")  # fmt: skip
    return 0

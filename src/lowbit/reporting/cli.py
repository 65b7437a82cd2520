"""``lowbit report``: the measured report from the command line.

    lowbit report --task digits --out report/                    a demo CNN, with training
    lowbit report MODEL --weights W --calib X --evaluate mod:fn --out DIR [--schemes ...]
    lowbit report --task digits --out docs/report --readme README.md    also refresh README

``--readme`` replaces the text between ``<!-- lowbit-report:start -->`` and
``<!-- lowbit-report:end -->`` in that file with the report's tables, so the README shows
numbers a command produced, not typed ones.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import lowbit
from lowbit.errors import LowbitError
from lowbit.tasks import add_model_arguments, task_problem

__all__ = ["add_parser", "write_report", "update_readme"]

START, END = "<!-- lowbit-report:start -->", "<!-- lowbit-report:end -->"


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="measure every scheme on a model: Markdown, HTML, JSON")
    add_model_arguments(p, "calibration inputs [N, ...] for MODEL")
    p.add_argument("--evaluate", help="'package.module:fn' or 'file.py:fn', fn(model) -> float")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--schemes", nargs="+", help="variants (default: lowbit.report's list)")
    p.add_argument("--metric-name", default=None, help="what evaluate returns (for the tables)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--readme", help="a Markdown file whose report section to refresh")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_report)


def write_report(task: str, out: str | Path, seed: int = 0, batch: int = 128) -> Path:
    """Train the demo ``task`` model, report on it (training table included) into ``out``."""
    p = task_problem(task, seed, batch)
    rep = lowbit.report(p.model, calibration=p.calibration, evaluate=p.evaluate,
                        train=p.train_batches, metric_name=p.metric_name,
                        title=f"lowbit report: the {task} {p.description}")  # fmt: skip
    return rep.save(out)


def _check_markers(path: Path) -> str:
    if not path.is_file():
        raise LowbitError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    starts = re.findall(rf"^{re.escape(START)}$", text, flags=re.M)
    ends = re.findall(rf"^{re.escape(END)}$", text, flags=re.M)
    if len(starts) != 1 or len(ends) != 1 or text.index(START) > text.index(END):
        raise LowbitError(
            f"{path} needs one line '{START}' followed by one line '{END}' (each alone on its "
            "line) around the section to refresh"
        )
    return text


def update_readme(readme: str | Path, report_md: str) -> None:
    """Put ``report_md``'s tables (its first heading dropped) between the markers."""
    path = Path(readme)
    text = _check_markers(path)
    body = re.sub(r"^# .*\n", "", report_md, count=1)
    body = re.sub(r"^(#+) ", r"##\1 ", body, flags=re.M)  # ## -> #### inside the README
    body = re.sub(r"!\[[^\]]*\]\([^)]*\)\n*", "", body)  # plots live in the HTML
    head, rest = text.split(f"{START}\n", 1)
    path.write_text(
        f"{head}{START}\n{body.strip()}\n{END}{rest.split(END, 1)[1]}", encoding="utf-8"
    )


def cmd_report(args: argparse.Namespace) -> int:
    from lowbit.search.cli import user_problem

    if args.task and args.model:
        raise LowbitError("give either MODEL or --task, not both")
    if args.readme:
        _check_markers(Path(args.readme))  # before minutes of measuring, not after
    if args.task:
        print(f"training the {args.task} demo model (seed {args.seed}), then measuring...")
        out = write_report(args.task, args.out, args.seed, args.batch_size)
    else:
        model, calibration, evaluate = user_problem(args)
        rep = lowbit.report(model, calibration=calibration, evaluate=evaluate,
                            schemes=args.schemes, metric_name=args.metric_name or "metric",
                            progress=True)  # fmt: skip
        out = rep.save(args.out)
    if args.readme:
        update_readme(args.readme, (out / "report.md").read_text(encoding="utf-8"))
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {out}/report.md, report.html, report.json and the plots")
    return 0

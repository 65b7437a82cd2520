"""The demo's two offline tasks: a 2-D CNN on scikit-learn's digits, a 1-D CNN on MNIST-1D.

Both data sets are generated or bundled locally (no download): ``sklearn.datasets.load_digits``
ships its 1797 8x8 images, and ``mnist1d.data.make_dataset`` synthesises the 5000 length-40
MNIST-1D signals (Greydanus 2020) from templates inside the package.

>>> task = TASKS["mnist1d"]
>>> split = task.load(seed=0)
>>> split.x_train.shape[1:], task.make_model()(split.x_test[:2]).shape
(torch.Size([1, 40]), torch.Size([2, 10]))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "DigitsCNN",
    "MNIST1DCNN",
    "Split",
    "Task",
    "TASKS",
    "hold_out",
    "load_digits_split",
    "load_mnist1d_split",
    "train",
    "Problem",
    "task_problem",
    "task_names",
    "add_model_arguments",
    "classification_problem",
    "APP_TASKS",
]


class DigitsCNN(nn.Module):
    """Three conv blocks (conv-BN-ReLU, one of them depthwise-separable) and an MLP head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 2 * 2, 256), nn.ReLU(), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MNIST1DCNN(nn.Module):
    """Three 1-D conv blocks (the last two strided) and an MLP head, for ``[n, 1, 40]`` signals."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 32, 5, padding=2, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Conv1d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Conv1d(64, 128, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(128), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 10, 256), nn.ReLU(), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def hold_out(split: Split, n: int, seed: int = 0) -> tuple[Split, Split]:
    """``(train, validation)``: ``n`` random training samples held out of training, for choices
    made on data (``lowbit.auto``) that the held-out test set must not see. Both keep the test
    set; the validation split's ``x_train``/``y_train`` are the ``n`` held-out samples.

    >>> tr, val = hold_out(Split(torch.zeros(10, 2), torch.arange(10), torch.ones(3, 2),
    ...                          torch.arange(3)), 4)
    >>> len(tr.x_train), len(val.x_train), sorted(tr.y_train.tolist() + val.y_train.tolist())
    (6, 4, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    if not 0 < n < len(split.x_train):
        raise ValueError(f"hold out 1..{len(split.x_train) - 1} samples, got {n}")
    perm = torch.randperm(len(split.x_train), generator=torch.Generator().manual_seed(seed))
    val, tr = perm[:n], perm[n:]
    return (
        Split(split.x_train[tr], split.y_train[tr], split.x_test, split.y_test),
        Split(split.x_train[val], split.y_train[val], split.x_test, split.y_test),
    )


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> Split:
    """scikit-learn's bundled 8x8 digits (1797 images, no download) as ``[n, 1, 8, 8]`` in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    test, tr = perm[:n_test], perm[n_test:]
    return Split(x[tr], y[tr], x[test], y[test])


def load_mnist1d_split(seed: int = 0) -> Split:
    """MNIST-1D generated locally (``make_dataset``, never the download): 4000 train, 1000 test.

    ``seed`` offsets the package's default generation seed (42), so ``seed=0`` is the standard set.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed += seed
    data = make_dataset(args)

    def tensor(a, dtype):
        return torch.as_tensor(a, dtype=dtype)

    return Split(
        tensor(data["x"], torch.float32).unsqueeze(1),
        tensor(data["y"], torch.long),
        tensor(data["x_test"], torch.float32).unsqueeze(1),
        tensor(data["y_test"], torch.long),
    )


def train(
    model: nn.Module,
    split: Split,
    epochs: int,
    seed: int = 0,
    lr: float = 3e-3,
    *,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
) -> nn.Module:
    """Adam + cross-entropy, batch 64; seconds on a laptop CPU.

    ``schedule``: ``"cosine"`` (annealed per epoch) or ``"onecycle"`` (per step).
    """
    if schedule not in ("cosine", "onecycle"):
        raise ValueError(f"schedule is 'cosine' or 'onecycle', got {schedule!r}")
    torch.manual_seed(seed)
    n = len(split.x_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule == "onecycle":
        steps = epochs * -(-n // 64)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n).split(64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(split.x_train[idx]), split.y_train[idx])
            loss.backward()
            opt.step()
            if schedule == "onecycle":
                sched.step()
        if schedule == "cosine":
            sched.step()
    return model.eval()


@dataclass(frozen=True)
class Task:
    """A data set, a model architecture and how long to train it."""

    name: str
    make_model: Callable[[], nn.Module]
    load: Callable[..., Split]
    epochs: int
    validation: int  # training samples held out for choices made on data (lowbit.auto)


TASKS = {
    "digits": Task("digits", DigitsCNN, load_digits_split, epochs=12, validation=200),
    "mnist1d": Task("mnist1d", MNIST1DCNN, load_mnist1d_split, epochs=20, validation=500),
}


@dataclass(frozen=True)
class Problem:
    """A trained demo model with what the measuring tools need: calibration batches, an
    ``evaluate(model) -> float`` (higher is better, named by ``metric_name``), classification
    training batches (None for tasks whose loss is not cross-entropy) and the data split.
    ``validate`` (when the task has a validation split held out of training) is what choices
    such as ``lowbit.auto``'s are made on, so that ``evaluate``'s test set stays unseen."""

    model: nn.Module
    calibration: list[torch.Tensor]
    evaluate: Callable[[nn.Module], float]
    train_batches: list[tuple[torch.Tensor, torch.Tensor]] | None
    split: Split | None
    metric_name: str = "top-1"
    description: str = "CNN"
    validate: Callable[[nn.Module], float] | None = None


# application tasks beyond the two demo classifiers: name -> "module:function" returning a
# Problem for (seed, batch); imported only when asked for
APP_TASKS: dict[str, str] = {
    "kws": "lowbit.apps.kws:problem",
    "detection": "lowbit.apps.detection:problem",
}


def task_names() -> list[str]:
    """Every name :func:`task_problem` accepts."""
    return sorted([*TASKS, *APP_TASKS])


def add_model_arguments(parser, calib_help: str) -> None:
    """The CLI's way to name the float model, shared by ``report``, ``bench`` and ``auto``:
    ``MODEL [--weights W] --calib X``, or ``--task NAME``."""
    parser.add_argument("model", nargs="?", help="factory 'package.module:fn' or 'file.py:fn'")
    parser.add_argument("--task", choices=task_names(), help="use a demo task instead of MODEL")
    parser.add_argument("--weights", help="state dict (.safetensors or .pt) for MODEL")
    parser.add_argument("--calib", help=calib_help)


def task_problem(name: str, seed: int = 0, batch: int = 128) -> Problem:
    """Train ``TASKS[name]`` (seconds) and wrap it as a :class:`Problem`."""
    if name in APP_TASKS:
        import importlib

        module, _, fn = APP_TASKS[name].partition(":")
        return getattr(importlib.import_module(module), fn)(seed=seed, batch=batch)
    if name not in TASKS:
        from lowbit.errors import ConfigError

        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    task = TASKS[name]
    split, val = hold_out(task.load(seed=seed), task.validation, seed=seed)
    torch.manual_seed(seed)
    model = train(task.make_model(), split, task.epochs, seed=seed)
    return classification_problem(model, split, batch, validation=val)


def classification_problem(
    model: nn.Module,
    split: Split,
    batch: int = 128,
    description: str = "CNN",
    validation: Split | None = None,
) -> Problem:
    """A trained classifier as a :class:`Problem`: 4 calibration batches of ``batch`` training
    samples, test top-1, and training batches of 64 for the report's QAT row; with
    ``validation`` (a :func:`hold_out` split), ``validate`` is top-1 on its held-out samples."""
    from lowbit.measure.accuracy import top1_accuracy

    validate = None
    if validation is not None:
        validate = lambda m: top1_accuracy(m, validation.x_train, validation.y_train)  # noqa: E731

    return Problem(
        model=model,
        calibration=list(split.x_train[: 4 * batch].split(batch)),
        evaluate=lambda m: top1_accuracy(m, split.x_test, split.y_test),
        train_batches=list(zip(split.x_train.split(64), split.y_train.split(64), strict=True)),
        split=split,
        description=description,
        validate=validate,
    )

"""The demo tasks: offline, deterministic data and models of the right shapes."""

from __future__ import annotations

import pytest
import torch

from lowbit.tasks import MNIST1DCNN, TASKS, DigitsCNN, load_digits_split, load_mnist1d_split


def test_digits_split_is_offline_and_deterministic():
    a, b = load_digits_split(seed=3), load_digits_split(seed=3)
    assert a.x_train.shape[1:] == (1, 8, 8) and len(a.x_test) + len(a.x_train) == 1797
    assert (a.y_test == b.y_test).all()
    assert float(a.x_train.max()) <= 1.0


def test_mnist1d_is_generated_locally_and_deterministic():
    a, b = load_mnist1d_split(), load_mnist1d_split()
    assert a.x_train.shape == (4000, 1, 40) and a.x_test.shape == (1000, 1, 40)
    assert torch.equal(a.x_test, b.x_test) and set(a.y_train.tolist()) == set(range(10))
    assert not torch.equal(load_mnist1d_split(seed=1).x_test, a.x_test)


def test_model_shapes():
    assert DigitsCNN()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert MNIST1DCNN()(torch.zeros(2, 1, 40)).shape == (2, 10)
    assert set(TASKS) == {"digits", "mnist1d"}


def test_unknown_task_names_the_known_ones():
    from lowbit.errors import ConfigError
    from lowbit.tasks import task_names, task_problem

    with pytest.raises(ConfigError, match="known tasks: .*digits"):
        task_problem("imagenet")
    assert {"digits", "mnist1d"} <= set(task_names())


def test_task_problems_hold_validation_out_of_training_and_test():
    """``validate`` scores samples neither training nor the test set contains (issue 18)."""
    from lowbit.tasks import TASKS, hold_out

    split = TASKS["digits"].load(seed=0)
    train_part, val = hold_out(split, TASKS["digits"].validation, seed=0)
    rows = lambda x: {tuple(r.flatten().tolist()) for r in x}  # noqa: E731
    assert len(val.x_train) == 200 and len(train_part.x_train) == len(split.x_train) - 200
    assert not rows(val.x_train) & rows(train_part.x_train)
    assert not rows(val.x_train) & rows(split.x_test)

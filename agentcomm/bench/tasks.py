"""Training tasks for the time-to-accuracy runner and the convergence tests.

Each is a classification problem that trains on 2 CPU cores in seconds to minutes, with
nothing to download beyond scikit-learn's bundled digits.

Example::

    xtr, ytr, xte, yte = digits_data()      # 1400 train / 397 held out, 64 features
    model = digits_model()                  # the 64-256-256-10 MLP the tests train
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Task:
    """A classification task: data, a model, an optimiser's settings and a default target."""

    name: str
    data: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    model: Callable[[], torch.nn.Module]
    lr: float
    batch: int  # per rank
    target: float


def digits_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # installed by scripts/setup_env.sh

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def digits_model() -> torch.nn.Module:  # the MLP the averaging tests train
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 10))


def teacher_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels from a fixed random teacher network (16-32-10, tanh) on Gaussian inputs: no
    download; 20 000 samples are enough to generalise in 16 dimensions (a student reaches 85 %
    held out in ~800 steps of 256; in 128 dimensions it stalls near 72 %)."""
    g = torch.Generator().manual_seed(1)
    w1, w2 = torch.randn(16, 32, generator=g) / 16 ** 0.5, torch.randn(32, 10, generator=g) / 32 ** 0.5
    x = torch.randn(22000, 16, generator=g)
    y = (torch.tanh(x @ w1) @ w2).argmax(1)
    return x[:20000], y[:20000], x[20000:], y[20000:]


def student_model() -> torch.nn.Module:  # 1.08M parameters: 4.3 MB of gradients per step
    return torch.nn.Sequential(torch.nn.Linear(16, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                               torch.nn.ReLU(), torch.nn.Linear(1024, 10))


TASKS = {
    "digits": Task("digits", digits_data, digits_model, lr=0.05, batch=32, target=0.95),
    "teacher": Task("teacher", teacher_data, student_model, lr=0.05, batch=64, target=0.82),
}

"""The toy tasks of BIMT's paper (Liu, Gan & Tegmark 2023, code KindXiaoming/BIMT), generated here.

* ``independence``: inputs x in U[-1, 1]^4, targets ``((x1 + x3)^3, x2^2 + sin(pi x4))``; 100 training and 100 test
  points (``symbolic_formulas_3.1``).
* ``modular addition``: all pairs (a, b) of ``0 .. p-1`` labelled ``(a + b) mod p``, p = 59, a random 80% for training
  (``modular_addition_3.3``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from modmask_lens.tasks.arithmetic import modular_sum_table


@dataclass(frozen=True, eq=False)
class RegressionSplit:
    """Train and test points of a regression task."""

    train_inputs: Float[Tensor, "n_train n_in"]
    train_targets: Float[Tensor, "n_train n_out"]
    test_inputs: Float[Tensor, "n_test n_in"]
    test_targets: Float[Tensor, "n_test n_out"]


@dataclass(frozen=True, eq=False)
class TokenSplit:
    """Train and test token pairs of a classification task."""

    train_tokens: Int[Tensor, "n_train n_tokens"]
    train_labels: Int[Tensor, " n_train"]
    test_tokens: Int[Tensor, "n_test n_tokens"]
    test_labels: Int[Tensor, " n_test"]


def independence_targets(inputs: Float[Tensor, "n 4"]) -> Float[Tensor, "n 2"]:
    """``((x1 + x3)^3, x2^2 + sin(pi x4))``: two outputs that share no input (BIMT, "independence")."""
    x1, x2, x3, x4 = inputs.unbind(1)
    return torch.stack([(x1 + x3) ** 3, x2**2 + torch.sin(math.pi * x4)], dim=1)


def independence_data(n_train: int = 100, n_test: int = 100, seed: int = 0) -> RegressionSplit:
    """BIMT's independence task: 100 training and 100 test points, uniform in [-1, 1]^4."""
    generator = torch.Generator().manual_seed(seed)
    train_inputs = torch.rand(n_train, 4, generator=generator) * 2 - 1
    test_inputs = torch.rand(n_test, 4, generator=generator) * 2 - 1
    return RegressionSplit(
        train_inputs, independence_targets(train_inputs), test_inputs, independence_targets(test_inputs)
    )


def modular_addition_data(modulus: int = 59, train_fraction: float = 0.8, seed: int = 0) -> TokenSplit:
    """Every pair (a, b) with label ``(a + b) mod modulus``, a random ``train_fraction`` for training (BIMT: 59,
    0.8)."""
    first, second, sums = modular_sum_table(modulus)
    pairs = torch.from_numpy(np.stack([second, first], axis=1))  # the second operand varying fastest
    labels = torch.from_numpy(sums)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    n_train = int(len(pairs) * train_fraction)
    train, test = order[:n_train], order[n_train:]
    return TokenSplit(pairs[train], labels[train], pairs[test], labels[test])

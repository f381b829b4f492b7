"""Csordás et al. (2021)'s controlled arithmetic tasks as character-level text, plus modular addition.

- ``addmul``: two-digit operands, addition or multiplication mod 100 chosen by an operation token
  (``"07+45"`` -> ``"52"``, ``"07*45"`` -> ``"15"``); Csordás's ``dataset/double_op.py``.
- ``double_add``: two pairs of two-digit numbers summed at once, each mod 100 (``"12+34,56+78"`` -> ``"46,34"``);
  Csordás's ``dataset/tuple_arithmetic.py``.
- ``modadd``: addition mod p = 59 (``"17+45"`` -> ``"03"``), the grokking-style table task.

Numbers are zero-padded to two digits so every example of a task has the same layout. The finite tasks (addmul,
modadd) split their whole table at random into train and held-out test; double addition samples both.
"""

from __future__ import annotations

from math import isqrt

import numpy as np
from datasets import Dataset, DatasetDict

OPERAND_LIMIT = 100  # two-digit operands 0..99 (Csordás et al. 2021)
RESULT_MODULUS = 100  # results are kept mod 100: two output digits (Csordás et al. 2021)
MODULAR_ADDITION_PRIME = 59  # p of the modular addition task (BIMT's modulus, Liu, Gan & Tegmark 2023)
TABLE_TEST_FRACTION = 0.2  # share of a finite table held out for test; our choice, the papers test in-distribution
DOUBLE_ADD_TRAIN_SIZE = 200_000  # Csordás samples 1M; 200k distinct of 10^8 questions is plenty for a small model
DOUBLE_ADD_TEST_SIZE = 10_000  # Csordás's validation size
# Share of train operands set to 00. Each answer digit is a sum mod 10 of two input digits, uniform given either one,
# so a transformer trained on uniform questions gets no gradient toward the operand positions: 2-layer GPT-2 and
# Llama models stayed at chance loss (1.536 nats/token) for 1,500 steps at four settings here. With 10% zero
# operands (an answer digit then copies an input digit) the GPT-2 recipe reached 97% after 250 steps. Test
# questions stay uniform.
DOUBLE_ADD_ZERO_OPERAND_PROBABILITY = 0.1
# Offsets of each pair's two answer digits in a double-addition completion "ss,tt", for restrict_labels.
DOUBLE_ADD_PAIR_OFFSETS = {"pair1": (0, 1), "pair2": (3, 4)}


def _two_digits(values: np.ndarray) -> list[str]:
    return [f"{value:02d}" for value in values.tolist()]


def _split_table(table: dict[str, list], test_fraction: float, seed: int) -> DatasetDict:
    """Shuffle a finite table of examples with ``seed`` and hold out ``test_fraction`` of it as test.

    Raises:
        ValueError: ``test_fraction`` is outside [0, 1) (a split needs training examples).
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}; e.g. {TABLE_TEST_FRACTION}")
    size = len(table["question"])
    order = np.random.default_rng(seed).permutation(size)
    test_size = round(size * test_fraction)
    full = Dataset.from_dict(table)
    return DatasetDict({"train": full.select(order[test_size:]), "test": full.select(order[:test_size])})


def add_mul_task(seed: int = 0, test_fraction: float = TABLE_TEST_FRACTION) -> DatasetDict:
    """All 20,000 ``a+b`` / ``a*b`` (mod 100) questions, split at random; subtask column ``operation``.

    >>> add_mul_task()["train"].num_rows
    16000
    """
    left, right = (grid.ravel() for grid in np.meshgrid(np.arange(OPERAND_LIMIT), np.arange(OPERAND_LIMIT)))
    table: dict[str, list] = {"question": [], "answer": [], "operation": []}
    for operation, symbol, results in (("add", "+", left + right), ("mul", "*", left * right)):
        table["question"] += [f"{a}{symbol}{b}" for a, b in zip(_two_digits(left), _two_digits(right))]
        table["answer"] += _two_digits(results % RESULT_MODULUS)
        table["operation"] += [operation] * len(results)
    return _split_table(table, test_fraction, seed)


def modular_sum_table(modulus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``(a, b)`` of ``0 .. modulus - 1`` (``a`` varying fastest) and ``(a + b) % modulus``: the table of
    the modular-addition task, as text here and as tokens for BIMT (:mod:`modmask_lens.tasks.bimt_tasks`)."""
    left, right = (grid.ravel() for grid in np.meshgrid(np.arange(modulus), np.arange(modulus)))
    return left, right, (left + right) % modulus


def modular_addition_task(
    seed: int = 0, prime: int = MODULAR_ADDITION_PRIME, test_fraction: float = TABLE_TEST_FRACTION
) -> DatasetDict:
    """All ``prime**2`` questions ``a+b`` with answer ``(a + b) % prime``, split at random.

    >>> modular_addition_task()["test"].num_rows
    696
    """
    if not 2 <= prime <= OPERAND_LIMIT or any(prime % divisor == 0 for divisor in range(2, isqrt(prime) + 1)):
        raise ValueError(f"prime must be a prime in 2..{OPERAND_LIMIT} (two-digit operands); got {prime}")
    left, right, sums = modular_sum_table(prime)
    table = {
        "question": [f"{a}+{b}" for a, b in zip(_two_digits(left), _two_digits(right))],
        "answer": _two_digits(sums),
    }
    return _split_table(table, test_fraction, seed)


def _double_add_examples(operands: np.ndarray) -> dict[str, list]:
    """Rows ``[a, b, c, d]`` of ``operands`` as ``"a+b,c+d"`` -> ``"(a+b)%100,(c+d)%100"``."""
    texts = [_two_digits(column) for column in operands.T]
    sums = [
        _two_digits((operands[:, 0] + operands[:, 1]) % RESULT_MODULUS),
        _two_digits((operands[:, 2] + operands[:, 3]) % RESULT_MODULUS),
    ]
    return {
        "question": [f"{a}+{b},{c}+{d}" for a, b, c, d in zip(*texts)],
        "answer": [f"{first},{second}" for first, second in zip(*sums)],
    }


def _double_add_codes(operands: np.ndarray) -> np.ndarray:
    """Rows ``[a, b, c, d]`` as one integer ``a*10^6 + b*10^4 + c*10^2 + d`` (to draw distinct questions cheaply)."""
    return operands @ (OPERAND_LIMIT ** np.arange(3, -1, -1))


def _double_add_operands(codes: np.ndarray) -> np.ndarray:
    return np.stack([codes // OPERAND_LIMIT**power % OPERAND_LIMIT for power in (3, 2, 1, 0)], axis=1)


def double_addition_task(
    seed: int = 0,
    train_size: int = DOUBLE_ADD_TRAIN_SIZE,
    test_size: int = DOUBLE_ADD_TEST_SIZE,
    zero_operand_probability: float = DOUBLE_ADD_ZERO_OPERAND_PROBABILITY,
) -> DatasetDict:
    """Two pairs summed at once (mod 100 each): distinct questions, test disjoint from train. Test operands are
    uniform; each train operand is 00 with probability ``zero_operand_probability`` (else uniform) before repeated
    questions are dropped (which removes a few zero-heavy ones).

    >>> double_addition_task(train_size=10, test_size=5)["test"].num_rows
    5
    """
    rng = np.random.default_rng(seed)
    test_codes = np.unique(rng.integers(0, OPERAND_LIMIT**4, size=2 * test_size))
    test_codes = rng.permutation(test_codes)[:test_size]
    operands = rng.integers(0, OPERAND_LIMIT, size=(2 * train_size + 100, 4))
    operands[rng.random(operands.shape) < zero_operand_probability] = 0
    codes = _double_add_codes(operands)
    _, first = np.unique(codes, return_index=True)  # distinct, in the order drawn
    train_codes = codes[np.sort(first)]
    train_codes = train_codes[~np.isin(train_codes, test_codes)][:train_size]
    if len(test_codes) < test_size or len(train_codes) < train_size:
        raise ValueError("asked for more distinct double-addition questions than were drawn; lower the sizes")
    return DatasetDict(
        {
            "train": Dataset.from_dict(_double_add_examples(_double_add_operands(train_codes))),
            "test": Dataset.from_dict(_double_add_examples(_double_add_operands(test_codes))),
        }
    )

"""Training recipes of the shipped zoo models: task, architecture and optimisation, one frozen record per model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from modmask_lens.modularity.bimt import MODULAR_ADDITION, BimtConfig
from modmask_lens.modularity.clusterability_loss import ClusterabilityConfig


@dataclass(frozen=True)
class Architecture:
    """A small decoder-only transformer built from a Hugging Face config.

    ``family``: ``"gpt2"`` (GPT2LMHeadModel, learned positions) or ``"llama"`` (LlamaForCausalLM, rotary positions,
    grouped-query attention when ``n_key_value_heads < n_heads``). Embeddings are tied in both.
    """

    family: Literal["gpt2", "llama"]
    n_layers: int
    d_model: int
    n_heads: int
    n_key_value_heads: int | None = None  # llama only; None means one key/value head per query head
    d_mlp: int | None = None  # None: 4 * d_model, GPT-2's ratio
    n_positions: int = 128  # SCAN's longest sequence is 9 + 1 + 48 + 1 = 59 tokens


@dataclass(frozen=True)
class Recipe:
    """How a zoo model is trained. Optimiser defaults (chosen for short CPU runs): AdamW with
    betas (0.9, 0.98), weight decay 0.01, 200 warm-up steps then cosine decay, gradient clipping at 1, no dropout.

    ``bimt`` / ``clusterability`` make a modular-training variant (at most one): the task loss plus BIMT's
    connection cost and swaps (its ``steps`` becomes the recipe's, its learning rate is unused), or minus the
    clusterability reward; None for both is plain training.
    """

    name: str
    task: str
    architecture: Architecture
    steps: int
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 500  # steps between progress evaluations (logged only; they never change training)
    checkpoint_every: int = 250
    bimt: BimtConfig | None = None
    clusterability: ClusterabilityConfig | None = None


RECIPES: dict[str, Recipe] = {
    "scan": Recipe(
        name="scan",
        task="scan",
        architecture=Architecture(family="gpt2", n_layers=3, d_model=128, n_heads=4),
        steps=4000,
    ),
    "math": Recipe(
        name="math",
        task="math",
        architecture=Architecture(
            family="llama", n_layers=3, d_model=128, n_heads=4, n_key_value_heads=2, n_positions=256
        ),
        steps=8000,
    ),
    "addmul": Recipe(
        name="addmul",
        task="addmul",
        architecture=Architecture(family="gpt2", n_layers=2, d_model=128, n_heads=4),
        steps=6000,
        batch_size=256,
        lr=1e-3,
        weight_decay=0.1,  # stronger than the default: held-out table entries need a generalising solution
    ),
    "modadd": Recipe(
        name="modadd",
        task="modadd",
        architecture=Architecture(family="llama", n_layers=2, d_model=128, n_heads=4, n_key_value_heads=2),
        steps=2000,
        batch_size=256,
        lr=1e-3,
        weight_decay=0.1,
    ),
    "double-add": Recipe(
        name="double-add",
        task="double_add",
        # The default settings (lr 2e-3, batch 128). Learns within a few hundred steps only because 10% of the
        # train operands are 00 (arithmetic.DOUBLE_ADD_ZERO_OPERAND_PROBABILITY explains why).
        architecture=Architecture(family="gpt2", n_layers=2, d_model=128, n_heads=4),
        steps=4000,
    ),
}


# Modular-training variants: the same recipe and budget, plus BIMT (the paper code's modular-addition settings, its
# transformer-sized ones: mean cost per matrix, A = 2, l0 = 0.5, lambda 0.1 with x10 at 1/4 and x0.1 at 3/4, 30
# units moved per axis every 200 steps) or the clusterability loss (Golechha et al.: k = 4 blocks, lambda 20).
for _base in ("scan", "math"):
    RECIPES[f"{_base}-bimt"] = replace(RECIPES[_base], name=f"{_base}-bimt", bimt=MODULAR_ADDITION)
    RECIPES[f"{_base}-clusterability"] = replace(
        RECIPES[_base], name=f"{_base}-clusterability", clusterability=ClusterabilityConfig()
    )


def recipe(name: str) -> Recipe:
    """The :class:`Recipe` of zoo model ``name``; raises with the known names if there is none."""
    if name not in RECIPES:
        raise KeyError(f"no zoo recipe called {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]

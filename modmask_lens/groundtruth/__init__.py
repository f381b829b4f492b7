"""Ground truth for mask methods: models whose subtasks' weights are known."""

from modmask_lens.groundtruth.case import GroundTruthCase, UnitTruth
from modmask_lens.groundtruth.plants import PLANTS, available_plants, load_plant, plant_cases

__all__ = ["PLANTS", "GroundTruthCase", "UnitTruth", "available_plants", "load_plant", "plant_cases"]

"""Training with the papers' recipes and a checkpoint schedule: ``tunnelscope.train(...)``."""

from .loop import TrainingDivergedError, TrainResult, evaluate, resolve_device, train
from .recipes import RECIPES, Recipe, early_steps

__all__ = ["RECIPES", "Recipe", "TrainResult", "TrainingDivergedError", "early_steps", "evaluate",
           "resolve_device", "train"]

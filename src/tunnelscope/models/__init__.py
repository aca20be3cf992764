"""The model zoo and probe points: ``tunnelscope.models.build("vgg19-w0.5", 10, (3, 32, 32))``."""

from .base import ZooModel
from .init import seeded, untrained_copy
from .probe_points import POINT_SETS, order_by_execution, probe_points
from .registry import FAMILIES, build, check_spec, count_parameters, list_models, load_weights
from .resolve import load_model, resolve_model
from .tv import torchvision_names

__all__ = [
    "FAMILIES", "POINT_SETS", "ZooModel", "build", "check_spec", "count_parameters", "list_models", "load_weights",
    "load_model", "order_by_execution", "probe_points", "resolve_model", "seeded", "torchvision_names",
    "untrained_copy",
]

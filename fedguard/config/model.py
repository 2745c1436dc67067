"""The `model` group: which architecture (`fedguard.models.MODELS`)."""

from __future__ import annotations

from dataclasses import dataclass

from fedguard.config.errors import check_name, fail
from fedguard.models import MODELS


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden: int = 128  # mlp, cnn, cnn_bn: width of the dense layers


def validate_model(model) -> None:
    check_name("model", model.name, MODELS)
    if model.hidden < 1:
        fail("model.hidden", model.hidden, "a layer width >= 1")

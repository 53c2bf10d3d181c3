"""Continued pre-training (CPT): `midus.train.train(TrainConfig.from_yaml(path)) -> final model folder`."""

from ..data.sources import DataConfig
from .config import TrainConfig, TrainConfigError
from .run import train

__all__ = ["DataConfig", "TrainConfig", "TrainConfigError", "train"]

"""The training engine: config, schedules, checkpoints, monitoring and the Trainer."""

from .checkpoint import CheckpointError, Checkpointer, load_checkpoint
from .config import TrainConfig
from .guard import NonFiniteTraining
from .optim import MasterWeightAdam
from .trainer import Trainer, train

__all__ = ["CheckpointError", "Checkpointer", "MasterWeightAdam", "NonFiniteTraining", "TrainConfig", "Trainer", "load_checkpoint",
           "train"]

"""The training engine: the Trainer, its components (metrics, monitor, NaN guard), optimizers and schedules.

The configuration (``vaefast.config``), checkpoints (``vaefast.checkpoint``) and the run plan (``vaefast.plan``)
live outside, so that evaluation uses them without the trainer.
"""

from ..checkpoint import CheckpointError, Checkpointer, load_checkpoint
from ..config import TrainConfig
from .guard import NonFiniteTraining
from .optim import MasterWeightAdam, NativeAdam
from .trainer import Trainer

__all__ = ["CheckpointError", "Checkpointer", "MasterWeightAdam", "NativeAdam", "NonFiniteTraining", "TrainConfig",
           "Trainer", "load_checkpoint"]

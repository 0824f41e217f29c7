"""The one typed home of a run's configuration: sections of options, and everything generated from them.

``sections`` declares every option once; ``flags`` builds the command line from them, ``files`` reads TOML and the
configs stored in checkpoints, ``docs`` writes the options page. Nothing here imports torch.
"""

from .files import load_toml, merge, resolve, save_resolved
from .sections import (DIFFUSERS_CLAMP, SECTIONS, CheckpointConfig, DataConfig, LoggingConfig, ModelConfig,
                       ObjectiveConfig, OptimConfig, RecipeConfig, RuntimeConfig)
from .train_config import OPTION_INDEX, TrainConfig

__all__ = ["DIFFUSERS_CLAMP", "OPTION_INDEX", "SECTIONS", "CheckpointConfig", "DataConfig", "LoggingConfig",
           "ModelConfig", "ObjectiveConfig", "OptimConfig", "RecipeConfig", "RuntimeConfig", "TrainConfig",
           "load_toml", "merge", "resolve", "save_resolved"]

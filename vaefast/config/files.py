"""Reading and writing configurations: TOML files, the layers of a run's configuration, the resolved copy."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from .train_config import TrainConfig, sectioned


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from None


def merge(base: dict, overrides: dict) -> dict:
    """Nested dict merge: values in ``overrides`` win."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve(*layers: dict) -> TrainConfig:
    """Layers in any spelling, later ones winning: e.g. a checkpoint's config < a TOML file < the flags."""
    merged: dict = {}
    for layer in layers:
        merged = merge(merged, sectioned(layer))
    return TrainConfig.from_dict(merged)


def save_resolved(cfg: TrainConfig, folder: Path) -> Path:
    """Write the resolved configuration beside the checkpoints, as JSON (TOML has no null)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return path

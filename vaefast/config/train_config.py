"""``TrainConfig``: the sections of a run, and the one map from an option's flat name to its field.

Three spellings of the same configuration are read: sectioned (``{"optim": {"lr": ...}}``, what vaefast writes),
flat (``{"lr": ..., "model": "conv"}``, the flags' names, flat TOML files and ``TrainConfig.from_options``), and
the format that checkpoints written before the sections hold (flat, with a ``model`` table of field names).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .options import option_key
from .sections import (DIFFUSERS_CLAMP, LDM_DEFAULTS, SECTIONS, CheckpointConfig, DataConfig, LoggingConfig,
                       ModelConfig, ObjectiveConfig, OptimConfig, RecipeConfig, RuntimeConfig)

# flat option name (= flag without dashes) -> (section name, field name)
OPTION_INDEX: dict[str, tuple[str, str]] = {
    option_key(f): (section.name, f.name) for section in SECTIONS for f in dataclasses.fields(section)}
SECTION_TYPES = {section.name: section for section in SECTIONS}


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def sections(self):
        return [getattr(self, section.name) for section in SECTIONS]

    def validate(self) -> None:
        """Re-check every value (after fields were changed in place), all problems in one error."""
        problems = [problem for section in self.sections() for problem in section.problems()]
        problems += list(self.rules())
        if problems:
            raise ValueError("invalid configuration: " + "; ".join(problems))

    def rules(self):
        """Rules between sections: what the LDM recipe's step cannot combine with."""
        if not self.recipe.ldm:
            return
        o, r = self.objective, self.runtime
        if o.samples != 1 or o.objective != "elbo" or o.free_bits > 0:
            yield "--recipe ldm takes one reconstruction per image and the plain KL: drop --samples, --objective " \
                  "and --free-bits"
        if r.precision == "fp16":
            yield "--recipe ldm trains in fp32 or bf16 (its two optimizers do not share fp16's loss scaler)"
        if self.model.learn_sigma or self.model.likelihood == "logistic":
            yield "--recipe ldm trains no likelihood scale (its learned logvar plays that part): drop --learn-sigma " \
                  "and pick gaussian, laplace or bernoulli"
        if r.master_weights:
            yield "--recipe ldm steps the autoencoder, logvar and discriminator with torch's fused Adam: drop " \
                  "--master-weights"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """From any of the three spellings; unknown keys are refused with the known ones listed."""
        values = with_recipe_defaults(sectioned(values))
        return cls(**{name: SECTION_TYPES[name](**fields) for name, fields in values.items()})

    @classmethod
    def from_options(cls, **options) -> "TrainConfig":
        """From options by their flag names: ``TrainConfig.from_options(lr=3e-4, batch_size=64, model="conv")``."""
        return cls.from_dict(options)


def sectioned(values: dict) -> dict[str, dict]:
    """Any spelling -> {section: {field: value}}. A ``diffusers:SPEC`` model given without a clamp gets
    diffusers' own, as its DiagonalGaussianDistribution clamps."""
    out: dict[str, dict] = {}
    for key, value in values.items():
        if key in SECTION_TYPES and isinstance(value, SECTION_TYPES[key]):
            value = dataclasses.asdict(value)
        if key in SECTION_TYPES and isinstance(value, dict):
            section = SECTION_TYPES[key]
            names = {f.name for f in dataclasses.fields(section)}
            value = _legacy_model(dict(value)) if key == "model" else value
            unknown = sorted(set(value) - names)
            if unknown:
                raise ValueError(f"unknown {key} config keys: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
            out.setdefault(key, {}).update(value)
        elif key in OPTION_INDEX:
            section, name = OPTION_INDEX[key]
            out.setdefault(section, {})[name] = value
        else:
            known = sorted([*OPTION_INDEX, *SECTION_TYPES])
            raise ValueError(f"unknown config key {key!r}; known: {', '.join(known)}")
    model = out.get("model", {})
    if str(model.get("kind", "")).startswith("diffusers:") and "clamp" not in model:
        model["clamp"] = DIFFUSERS_CLAMP
    return out


def with_recipe_defaults(values: dict[str, dict]) -> dict[str, dict]:
    """``recipe = "ldm"`` fills the options the configuration leaves out with the recipe's (LDM_DEFAULTS). Applied
    to the whole merged configuration only, so that a value from any layer (TOML, checkpoint, flag) wins."""
    if values.get("recipe", {}).get("recipe") != "ldm":
        return values
    for section, defaults in LDM_DEFAULTS.items():
        given = values.setdefault(section, {})
        for name, value in defaults.items():
            given.setdefault(name, value)
    return values


def _legacy_model(model: dict) -> dict:
    """Checkpoints before the sections spelled a diffusers model as kind "diffusers" plus a ``diffusers`` key."""
    if "diffusers" in model:
        spec = model.pop("diffusers")
        if model.get("kind") == "diffusers":
            model["kind"] = f"diffusers:{spec}"
    return model

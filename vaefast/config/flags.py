"""The command-line flags, generated from the config's fields: one flag per option, grouped by section.

Every flag defaults to "not given" (``argparse.SUPPRESS``), so that a TOML file and a resumed checkpoint's config
show through wherever a flag is absent.
"""

from __future__ import annotations

import argparse
import dataclasses

from .options import choices_of, option_key, unwrap_optional
from .sections import SECTIONS
from .train_config import OPTION_INDEX


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _default_text(f: dataclasses.Field) -> str:
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if default is None:
        return ""
    if isinstance(default, bool):
        return f" (default: {'on' if default else 'off'})"
    if isinstance(default, (list, tuple)):
        return f" (default: {','.join(map(str, default))})"
    return f" (default: {default})"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    for section in SECTIONS:
        group = parser.add_argument_group(f"{section.title} options")
        hints = section.hints()
        for f in dataclasses.fields(section):
            key = option_key(f)
            kwargs: dict = {"dest": key, "default": argparse.SUPPRESS,
                            "help": f.metadata["help"] + _default_text(f)}
            inner, _ = unwrap_optional(hints[f.name])
            if f.metadata.get("parse") is not None:
                kwargs["type"] = f.metadata["parse"]
            elif inner is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif choices_of(inner) is not None:
                kwargs["choices"] = list(choices_of(inner))
            else:
                kwargs["type"] = inner
            if f.metadata.get("metavar"):
                kwargs["metavar"] = f.metadata["metavar"]
            group.add_argument(flag_name(key), **kwargs)


def options_given(args: argparse.Namespace) -> dict:
    """The options the command line set, by flat name."""
    return {key: getattr(args, key) for key in OPTION_INDEX if key in vars(args)}

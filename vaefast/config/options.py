"""How an option is declared: one dataclass field holds its default, help, flag name, range and parser.

A section is a dataclass of such fields. Its values are checked when it is built (``__post_init__``) and again by
``validate()`` after changes: the field's type (a ``Literal`` gives the choices), its range, then the section's own
rules between fields. The command line (``vaefast.config.flags``), the TOML and checkpoint readers
(``vaefast.config.files``) and the options page (``vaefast.config.docs``) are all generated from these fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, ClassVar, Iterator, Literal, NamedTuple


class Range(NamedTuple):
    """A value's allowed range: ``test(value)`` is True inside it; ``text`` says it in words ("≥ 1")."""

    test: Callable[[Any], bool]
    text: str


def at_least(lo) -> Range:
    return Range(lambda v: v >= lo, f">= {lo}")


def above(lo) -> Range:
    return Range(lambda v: v > lo, f"> {lo}")


def within(lo, hi) -> Range:
    """lo <= value < hi."""
    return Range(lambda v: lo <= v < hi, f"in [{lo}, {hi})")


def option(default=dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
           key: str | None = None, range: Range | None = None, parse: Callable[[str], Any] | None = None,
           metavar: str | None = None):
    """A config field. ``key`` is the option's flat name, which is also its flag (``--key-with-dashes``), its key in a
    flat TOML file and in older checkpoints; it defaults to the field's name. ``parse`` turns the flag's text into
    the value (raising ``argparse.ArgumentTypeError``); plain ints, floats, strings, choices and booleans need none."""
    metadata = {"help": help, "key": key, "range": range, "parse": parse, "metavar": metavar}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def unwrap_optional(hint) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), len(args) < len(typing.get_args(hint))
    return hint, False


def choices_of(hint) -> tuple | None:
    inner, _ = unwrap_optional(hint)
    return typing.get_args(inner) if typing.get_origin(inner) is Literal else None


def _type_problem(value, hint) -> str | None:
    inner, optional = unwrap_optional(hint)
    if value is None:
        return None if optional else "must be set"
    choices = choices_of(inner)
    if choices is not None:
        return None if value in choices else f"must be one of {', '.join(map(str, choices))}, got {value!r}"
    origin = typing.get_origin(inner) or inner
    if origin is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if origin is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"must be an integer, got {value!r}"
    if origin is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"must be a number, got {value!r}"
    if origin is str:
        return None if isinstance(value, str) else f"must be a string, got {value!r}"
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"must be a list, got {value!r}"
        item = typing.get_args(inner)[0]
        bad = [v for v in value if _type_problem(v, item)]
        return f"must hold {item.__name__}s only, got {value!r}" if bad else None
    return None


class Section:
    """Mixin of the config sections: values checked on construction and by ``validate()``."""

    name: ClassVar[str]  # the TOML table and checkpoint key
    title: ClassVar[str]  # the --help group and docs heading

    def __init_subclass__(cls, *, name: str, title: str, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.name, cls.title = name, title

    def __post_init__(self):
        self.validate()

    @classmethod
    def hints(cls) -> dict:
        return typing.get_type_hints(cls)

    def problems(self) -> Iterator[str]:
        hints = self.hints()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            flag = "--" + option_key(f).replace("_", "-")
            problem = _type_problem(value, hints[f.name])
            if problem is None and value is not None and f.metadata.get("range") is not None:
                allowed = f.metadata["range"]
                problem = None if allowed.test(value) else f"must be {allowed.text}, got {value!r}"
            if problem is not None:
                yield f"{flag} {problem}"
        yield from self.rules()

    def rules(self) -> Iterator[str]:
        """Rules between this section's fields; each yields the problem in words."""
        return iter(())

    def validate(self) -> None:
        problems = list(self.problems())
        if problems:
            raise ValueError("invalid configuration: " + "; ".join(problems))

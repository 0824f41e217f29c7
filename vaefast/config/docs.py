"""The options page (``docs/options.md``), generated from the config's fields.

``python -m vaefast.config.docs docs/options.md`` rewrites it; tests/test_config.py fails when it is stale.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from .flags import flag_name
from .options import choices_of, option_key, unwrap_optional
from .sections import SECTIONS

HEADER = """# Training options

Every option of `vaefast train` (and `vaefast profile`), by section. Each is one field in
`vaefast/config/sections.py`: its flag, its TOML key, its check and this page are generated from that field
(`python -m vaefast.config.docs docs/options.md`; a test fails when this page is stale).

A TOML file (`--config run.toml`) may be flat (`lr = 3e-4`, `model = "conv"`: the flags' names) or sectioned
(`[optim]` `lr = 3e-4`: the field names below). Flags override the file; on `--resume` both override the
checkpoint's own configuration. Python: `TrainConfig.from_options(lr=3e-4, batch_size=64)`.
"""


def _type_text(hint) -> str:
    inner, optional = unwrap_optional(hint)
    choices = choices_of(inner)
    if choices is not None:
        text = " \\| ".join(f"`{c}`" for c in choices)
    elif inner is bool:
        text = "on/off"
    else:
        text = getattr(inner, "__name__", str(inner).replace("typing.", "")).replace("|", "\\|")
    return text + (" or unset" if optional and inner is not bool else "")


def _default(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)):
        return "`" + ",".join(map(str, value)) + "`"
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def options_markdown() -> str:
    lines = [HEADER]
    for section in SECTIONS:
        lines += [f"## {section.title[0].upper()}{section.title[1:]} (`[{section.name}]`)", "",
                  "| flag | field | values | default | meaning |", "|---|---|---|---|---|"]
        hints = section.hints()
        for f in dataclasses.fields(section):
            allowed = f.metadata.get("range")
            values = _type_text(hints[f.name]) + (f", {allowed.text}" if allowed else "")
            meaning = f.metadata["help"].replace("|", "\\|")
            lines.append(f"| `{flag_name(option_key(f))}` | `{f.name}` | {values} | {_default(f)} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if target is None:
        print(options_markdown())
    else:
        target.write_text(options_markdown())
        print(f"wrote {target}")

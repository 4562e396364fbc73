"""How a command's options fill its config dataclass, or the API function it calls.

Each command module has an `OPTION_FIELDS` dict for the options whose name or value differs
from the field (or parameter) they fill:

    "quiet": ("progress", operator.not_)   # -q fills `progress`, inverted
    "val_sequences": "max_sequences"       # renamed
    "as_json": None                        # no field: the command itself handles it

Every option not listed fills the field of its own name, as it is. Defaults come from the
dataclass (`default=TrainConfig.lr`); tests/cli/test_option_defaults.py walks every option
of every command through these dicts and compares its default with the field's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

#: a field name, (field name, value -> field value), or None for "not a field"
Target: TypeAlias = str | tuple[str, Callable[[Any], Any]] | None


def _same(value: Any) -> Any:
    return value


def target(option_fields: Mapping[str, Target], option: str
           ) -> tuple[str | None, Callable[[Any], Any]]:
    """(field, convert) that the option `option` fills; field None: it fills none."""
    where = option_fields.get(option, option)
    if where is None or isinstance(where, str):
        return where, _same
    return where


def field_values(values: Mapping[str, Any], option_fields: Mapping[str, Target]
                 ) -> dict[str, Any]:
    """Option values -> keyword arguments of the config dataclass or API function."""
    out: dict[str, Any] = {}
    for option, value in values.items():
        name, convert = target(option_fields, option)
        if name is not None:
            out[name] = convert(value)
    return out

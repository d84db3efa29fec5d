"""What every config section shares: unknown keys refused, no booleans taken as numbers,
local paths expanded, and validation errors worded as one line naming the field."""

from __future__ import annotations

import os
from typing import Annotated, Any, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
)


def _local_path(value: str) -> str:
    # an empty path read as "unset" sent files and locks to the default place without a word
    if not value.strip():
        raise ValueError("is empty: give a path, or leave the key out for the default")
    # a config is not seen by a shell: a leading ~ would name a folder called "~" in the
    # working directory (and two cron jobs in different folders would hold different locks)
    return os.path.expanduser(value)


LocalPath = Annotated[str, AfterValidator(_local_path)]


def kinds_of(annotation: Any) -> set[Any]:
    """The types a field takes: {int, NoneType} for `int | None`, {float} for `float`."""
    return set(get_args(annotation)) or {annotation}


class Section(BaseModel):
    # Unknown keys are typos far more often than intentional: reject them by name.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1: `epochs: true` or `lr: yes` would train, silently, on 1
        if isinstance(value, bool) and info.field_name is not None:
            kinds = kinds_of(cls.model_fields[info.field_name].annotation)
            if kinds & {int, float} and bool not in kinds:
                raise ValueError(f"{value!r} is a boolean (YAML reads true, yes and on so), not a "
                                 "number; give a number")
        return value


MAX_STEPS = 2**31 - 1


def error_lines(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; `forecast config` lists every key with its default"
        elif isinstance(e.get("input"), str | int | float) and e["type"] not in (
                "value_error", "int_from_float"):  # these say the value already
            value = e["input"]
            if isinstance(value, str) and len(value) > 64:
                value = value[:61] + "..."
            msg += f" (got {value!r})"
        # Cross-field checks have no single location; their message names the fields.
        lines.append(f"{where}: {msg}" if where else msg)
    return "; ".join(lines)


def format_errors(err: ValidationError, source: str) -> str:
    return f"invalid configuration in {source}: {error_lines(err)}"

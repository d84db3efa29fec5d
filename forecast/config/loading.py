"""From YAML files (with `extends:`) and `--set section.key=value` overrides to one
validated `Config`, and back to YAML."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from forecast.config.fields import format_errors
from forecast.config.root import Config
from forecast.errors import ConfigError


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader with the scalars a config needs: `1e-3` is a float (PyYAML's YAML 1.1 rules
    read it as text, so `split.val=5e-2` was rejected), and a date stays text (split dates are
    strings; a `datetime.date` fitted no field). A key given twice in one mapping is an error:
    YAML would keep the last silently, dropping what the first one set."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges; it is no key
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                break  # the parent class refuses an unhashable key with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping; keep one",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=1e-3")
    # YAML parsing gives ints, floats, bools and null the same meaning as in the file.
    try:
        return key.strip().split("."), _yaml_load(raw)
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem}); quote "
                          f"it to mean the text, e.g. --set \"{key}='{raw}'\"") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys from the command line (`model.d_model=32`) into a raw config dict."""
    for item in overrides:
        path, value = _parse_override(item)
        set_dotted(raw, path, value, f"override {item!r}")
    return raw


def set_dotted(raw: dict[str, Any], path: list[str], value: Any, where: str) -> None:
    """raw[path[0]][path[1]]... = value, making sections on the way."""
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def build_config(raw: dict[str, Any], source: str = "configuration") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults), apply overrides, validate once."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        raw = _read_with_bases(Path(path), [])
        source = str(path)
    if overrides:  # a mistyped --set must not be blamed on the file alone
        source = f"{path} with the --set overrides" if path is not None else "the --set overrides"
    return build_config(apply_overrides(raw, overrides or []), source)


def _read_with_bases(p: Path, chain: list[Path]) -> dict[str, Any]:
    """The file's mapping merged over the file it names in `extends:` (relative to it)."""
    if not p.is_file():
        named = f" (extended by {str(chain[-1])!r})" if chain else ""
        raise ConfigError(f"config file {str(p)!r}{named} not found; pass an existing YAML file")
    if p.resolve() in chain:
        cycle = " -> ".join(str(c) for c in [*chain, p.resolve()])
        raise ConfigError(f"config files extend each other in a cycle: {cycle}; remove one "
                          "'extends:'")
    try:
        loaded = _yaml_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        one_line = " ".join(str(err).split())  # errors are one line on stderr
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {one_line}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text ({err.reason} at byte "
                          f"{err.start}); save it as UTF-8") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
    raw = dict(loaded or {})
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"extends in {str(p)!r} must be the path of another config file, "
                          "relative to this one")
    return _merged(_read_with_bases(p.parent / base, [*chain, p.resolve()]), raw)


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both_maps else value
    return out


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)

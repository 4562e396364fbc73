"""Read a config file (TOML or YAML) holding domains and CLI options.

The file's top level is a mapping of the CLI's long option names, with dashes or
underscores (``seq_len = 512``, ``teacher = "path"``), plus ``domains`` in one of two forms:

TOML::

    seq_len = 512
    [domains]
    code = "data/code/"
    prose = { path = "data/prose/*.jsonl.gz", text_field = "content" }

    # or, equivalently, a list of tables:
    [[domains]]
    name = "code"
    path = "data/code/"

YAML::

    seq-len: 512
    domains:
      code: data/code/
      prose: {path: "data/prose/*.jsonl.gz", text_field: content}

This module only parses and normalises; values keep the types the file gives them (TOML
``"false"`` stays a string, ``8.5`` a float). The CLI checks each value against its option's
type and range, then merges them with its flags (flags win).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from ddk.cache.corpus.sources import DomainSpec, validate_domains
from ddk.cache.errors import ConfigError

_DOMAIN_KEYS = {"name", "path", "text_field"}


def _yaml_loader():
    """yaml.SafeLoader that rejects duplicate keys (TOML already does)."""

    class _StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
        loader.flatten_mapping(node)
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in mapping:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            mapping[key] = loader.construct_object(value_node, deep=deep)
        return mapping

    _StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return _StrictLoader


def _parse_toml(text: str, path: Path) -> Any:
    """The TOML document; errors name line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # message ends with "(at line L, column C)"
        raise ConfigError(f"config file {path}: invalid TOML: {e}") from None


def _parse_yaml(text: str, path: Path) -> Any:
    """The YAML document (an empty file is an empty mapping); errors name line and column."""
    try:
        cfg = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"config file {path}:{where}: invalid YAML: {problem}") from None
    return {} if cfg is None else cfg


def load_config(path: Path) -> dict[str, Any]:
    """Parse a .toml or .yaml/.yml config file into a dict (keys not yet normalised).

    Raises ConfigError, naming the file (and line when the parser reports one), for a
    missing or unreadable file, an unknown suffix, a syntax error, duplicate keys, or a
    top level that is not a mapping. An empty file is an empty config.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(
            f"config file {path}: unknown type {path.suffix or '(no suffix)'!r}; "
            "use a .toml, .yaml or .yml file"
        )
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not valid UTF-8 (byte {e.start})") from None

    cfg = _parse_toml(text, path) if suffix == ".toml" else _parse_yaml(text, path)
    if not isinstance(cfg, dict):
        raise ConfigError(
            f"config file {path}: the top level must be a mapping of option names to values, "
            f"got {type(cfg).__name__}"
        )
    return cfg


def _normalize(mapping: Mapping[Any, Any], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise ConfigError(f"{what}: option names must be strings, got {key!r}")
        norm = key.replace("-", "_")
        if norm in out:
            raise ConfigError(f"{what}: {origin[norm]!r} and {key!r} set the same option")
        out[norm] = value
        origin[norm] = key
    return out


def normalize_keys(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level option names with dashes turned into underscores (``seq-len`` -> ``seq_len``).

    Only the top level (and the keys of ``[[domains]]`` tables, done by
    domains_from_config) is normalised: domain names may contain dashes. Raises
    ConfigError if two spellings of one option are both given or a key is not a string.
    """
    return _normalize(cfg, "config")


def _domain_entry(name: Any, value: Any, default_field: str, base_dir: Path | None) -> DomainSpec:
    """Entry `name` of the mapping form: a path, or a table with path and optional text_field."""
    where = f"config domain {name!r}"
    if isinstance(value, Mapping):
        entry = _normalize(value, where)
        unknown = set(entry) - (_DOMAIN_KEYS - {"name"})
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: path, text_field")
        value = entry.get("path")
        text_field = entry.get("text_field", default_field)
    else:
        text_field = default_field
    return _make_spec(name, value, text_field, base_dir, where)


def _table_entry(i: int, item: Any, default_field: str, base_dir: Path | None) -> DomainSpec:
    """Entry i of the list-of-tables form: a table with name, path and optional text_field."""
    where = f"config domains entry {i + 1}"
    if not isinstance(item, Mapping):
        raise ConfigError(
            f"{where}: expected a table with name and path, got {type(item).__name__}"
        )
    entry = _normalize(item, where)
    unknown = set(entry) - _DOMAIN_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {sorted(unknown)}; allowed: name, path, text_field"
        )
    for required in ("name", "path"):
        if required not in entry:
            raise ConfigError(f"{where}: missing {required!r}")
    return _make_spec(entry["name"], entry["path"], entry.get("text_field", default_field),
                      base_dir, where)


def _make_spec(
    name: Any, path: Any, text_field: Any, base_dir: Path | None, where: str
) -> DomainSpec:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: the domain name must be a non-empty string, got {name!r}")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: 'path' must be a non-empty string, got {path!r}")
    if not isinstance(text_field, str) or not text_field:
        raise ConfigError(f"{where}: 'text_field' must be a non-empty string, got {text_field!r}")
    if base_dir is not None and not Path(path).expanduser().is_absolute():
        path = str(Path(base_dir) / path)
    return DomainSpec(name=name, source=path, text_field=text_field)


def domains_from_config(
    cfg: Mapping[str, Any], *, base_dir: Path | None = None
) -> list[DomainSpec]:
    """The domains a config declares, in file order ([] when it has no ``domains``).

    Accepts ``domains = {name = "path", ...}`` (a value may also be a table with ``path``
    and ``text_field``) or a list of tables ``[[domains]] name=..., path=..., text_field=...``.
    A top-level ``text_field`` option is the default for domains that do not set one
    (else "text"). Relative paths are kept as written, unless base_dir is given, in which
    case they are taken relative to it (pass the config file's directory for that).
    Raises ConfigError for a malformed entry and CorpusError for invalid/duplicate names.
    """
    top = normalize_keys(cfg)
    domains = top.get("domains")
    if domains is None:
        return []
    default_field = top.get("text_field", "text")
    if not isinstance(default_field, str) or not default_field:
        raise ConfigError(f"config: 'text_field' must be a non-empty string, got {default_field!r}")

    specs: list[DomainSpec] = []
    if isinstance(domains, Mapping):
        for name, value in domains.items():
            specs.append(_domain_entry(name, value, default_field, base_dir))
    elif isinstance(domains, list):
        for i, item in enumerate(domains):
            specs.append(_table_entry(i, item, default_field, base_dir))
    else:
        raise ConfigError(
            "config: 'domains' must be a table of name = path or a list of "
            f"{{name, path, text_field}} tables, got {type(domains).__name__}"
        )
    validate_domains(specs)
    return specs

"""Loading a config: YAML, --set overrides, the configs shipped with the package.
"""
from __future__ import annotations

import os
import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from infer_distill.config.schema import Config
from infer_distill.errors import ConfigError
from infer_distill.storage.local import file_kind, read_regular

# A config is a page of YAML; a file far larger is not one (and is not read whole to find out)
CONFIG_MAX_BYTES = 1024 * 1024


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last one silently, so a
    section written twice would lose the first's settings without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: keys given beside it override the base's
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: construct_mapping below says so
                continue
            if first is not key_node.start_mark:
                raise _DuplicateKey(
                    None, None, f"the key {key!r} is given twice (first on line {first.line + 1}): keep one", key_node.start_mark)
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader: builds plain values only)

# ----------------------------------------------------------------------------------------
# Loading: YAML + --set overrides
# ----------------------------------------------------------------------------------------

def _parse_value(text: str) -> Any:
    """`--set` values are YAML scalars or flow lists: 5, 0.1, true, cpu, [a, b]."""
    try:
        return _yaml(text)
    except _DuplicateKey as e:
        raise ConfigError(f"--set value {text!r}: {e.problem}") from None
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise ConfigError(f"--set value {text[:40]!r}...: nested too deeply to be a config value") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set synthesis.iterations=100")
        path, value = item.split("=", 1)
        node = raw
        parts = path.strip().split(".")
        if not all(part.strip() for part in parts):
            raise ConfigError(f"--set {item!r}: the key {path.strip()!r} has an empty part; expected key.path=value, "
                              "e.g. --set synthesis.iterations=100")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


# ----------------------------------------------------------------------------------------
# The configs shipped with the package (infer_distill/configs; configs/ in a checkout links there)
# ----------------------------------------------------------------------------------------

PACKAGED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # absolute: a later chdir must not lose it


def packaged_configs() -> dict[str, Path]:
    """The shipped configs by name, e.g. {"quickstart": .../configs/quickstart.yaml}."""
    return {p.stem: p for p in sorted(PACKAGED_CONFIGS.glob("*.yaml"))}


def config_description(path: Path) -> str:
    """The first sentence of a config's leading comment."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    return text[: end + 1] if (end := text.find(". ")) >= 0 else text


def find_config(spec: str | Path) -> Path:
    """A config file by path, or a shipped config by name (`cifar10-ipc10`, with or without .yaml)."""
    path, shipped = Path(spec), packaged_configs()
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:  # a symlink loop, a path through a file
        raise ConfigError(f"config file {path} cannot be read ({e.strerror}): give a path to a YAML file") from None
    if mode is not None:
        if file_kind(mode) != "a regular file":
            raise ConfigError(f"config file {path} is {file_kind(mode)}, not a file: give a path to a YAML file, or one of "
                              f"the shipped configs: {', '.join(shipped)}")
        return path
    name = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and name in shipped:
        return shipped[name]
    hint = f"--config {name} (shipped with the package)" if name in shipped else f"one of the shipped configs: {', '.join(shipped)}"
    raise ConfigError(f"config file {path} does not exist: give a path to a YAML file, or {hint} (`infer-distill configs` lists them)")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    raw: dict = {}
    if path is not None:
        path = find_config(path)
        try:
            text = read_regular(path, CONFIG_MAX_BYTES).decode("utf-8")
            raw = _yaml(text) or {}
        except OSError as e:  # replaced since find_config, or larger than any config
            raise ConfigError(f"config file {path} cannot be read ({e.strerror}): give a YAML file of at most "
                              f"{CONFIG_MAX_BYTES:,} bytes") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): "
                              "save it as UTF-8") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        except RecursionError:
            raise ConfigError(f"config file {path} nests too deeply to be a config: a config is sections of keys") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections (dataset:, budget:, ...)")
    raw = apply_overrides(raw, overrides or [])
    return validate_config(raw, source=str(path) if path else "config")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 6, 6, 80, 80
_MAX_ERRORS = 20  # lines of a refusal; a value repeated by YAML aliases could give thousands


def validate_config(raw: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        lines, errors = [], e.errors()
        for err in errors[:_MAX_ERRORS]:
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; `infer-distill config` prints every key with its default)"
            elif err["type"] != "value_error" and not isinstance(err.get("input"), dict):  # a section's own errors are listed by key
                msg += f" (given: {_SHORT.repr(err['input'])})"  # short: a YAML alias can make a huge value
            lines.append(f"  {loc}: {msg}")
        if len(errors) > _MAX_ERRORS:
            lines.append(f"  ... and {len(errors) - _MAX_ERRORS} more")
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

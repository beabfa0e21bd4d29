"""Loading a config: YAML, --set overrides, the configs shipped with the package.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from infer_distill.config.schema import Config
from infer_distill.errors import ConfigError

# ----------------------------------------------------------------------------------------
# Loading: YAML + --set overrides
# ----------------------------------------------------------------------------------------

def _parse_value(text: str) -> Any:
    """`--set` values are YAML scalars or flow lists: 5, 0.1, true, cpu, [a, b]."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


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
    if path.is_file():
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
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections (dataset:, budget:, ...)")
    raw = apply_overrides(raw, overrides or [])
    return validate_config(raw, source=str(path) if path else "config")


def validate_config(raw: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; `infer-distill config` prints every key with its default)"
            elif err["type"] != "value_error" and not isinstance(err.get("input"), dict):  # a section's own errors are listed by key
                msg += f" (given: {err['input']!r})"
            lines.append(f"  {loc}: {msg}")
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

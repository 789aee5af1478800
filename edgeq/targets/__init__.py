"""Find, merge and validate device profiles and deployment targets.

``load_target("snapdragon8")`` resolves a built-in target; ``load_target("my.yaml")``
reads a user's file, which may ``extends:`` a built-in target and override fields.

>>> from edgeq.targets import load_target
>>> t = load_target("rpi5")
>>> t.target.format, t.profile.cpu.cores
('executorch', 4)

This subpackage owns device profiles and targets: ``schema`` (their typed, strict
models) and the loader here. It may import ``edgeq.errors``, ``edgeq.yamlio``,
``edgeq.backends`` (the registry's format and delegate names only) and ``edgeq.schemes``
(scheme names a target excludes); never torch, a runtime, or the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.errors import ConfigError, did_you_mean
from edgeq.targets.schema import DeviceProfile, Target
from edgeq.yamlio import LineMap, line_of, read_yaml, validate_yaml

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # edgeq/


def builtin_dir(kind: str) -> Path:
    """Directory of built-in ``profiles`` or ``targets``: inside the wheel, or the repo."""
    for candidate in (_PACKAGE_DIR / "_builtin" / kind, _PACKAGE_DIR.parent / kind):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"built-in {kind} directory not found", "reinstall edgeq")


def builtin_names(kind: str) -> list[str]:
    return sorted(p.stem for p in builtin_dir(kind).glob("*.yaml"))


@dataclass(frozen=True)
class ResolvedTarget:
    """A validated target together with the device profile it deploys onto."""

    target: Target
    profile: DeviceProfile
    source: Path


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    path = _resolve("profiles", str(name_or_path))
    data, lines = read_yaml(path)
    return validate_yaml(DeviceProfile, data, lines, path)


def load_target(name_or_path: str | Path) -> ResolvedTarget:
    """Resolve a target by built-in name or YAML path, apply ``extends:``, validate."""
    path = _resolve("targets", str(name_or_path))
    data, lines = _read_with_extends(path, seen=())
    target = validate_yaml(Target, data, lines, path)
    try:
        profile = load_profile(target.device)
    except ConfigError as exc:
        if "unknown device profile" in exc.message:
            line = line_of(lines, ("device",))
            raise ConfigError(
                f"{path}:{line}: device: {exc.message}", exc.hint
            ) from None
        raise
    return ResolvedTarget(target=target, profile=profile, source=path)


def validate_file(path: str | Path) -> DeviceProfile | ResolvedTarget:
    """Validate a profile or target file (told apart by its keys)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such file", "check the path")
    data, _ = read_yaml(p)
    if isinstance(data, dict) and "cpu" in data:
        return load_profile(p)
    return load_target(p)


# ------------------------------------------------------------------------- internals


def _resolve(kind: str, name: str) -> Path:
    looks_like_path = name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name
    if looks_like_path:
        path = Path(name).expanduser()
        if not path.exists():
            raise ConfigError(f"{kind[:-1]} file {name} not found", "check the path")
        return path
    builtin = builtin_dir(kind) / f"{name}.yaml"
    if builtin.exists():
        return builtin
    names = builtin_names(kind)
    what = "target" if kind == "targets" else "device profile"
    raise ConfigError(
        f"unknown {what} '{name}'{did_you_mean(name, names)}",
        "run 'edgeq targets list' to see the built-in ones, or pass a path to a YAML file",
    )


def _read_with_extends(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], LineMap]:
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level", "see 'edgeq targets show snapdragon8' for an example")
    base_name = data.pop("extends", None)
    if base_name is None:
        data.setdefault("name", _name_from_file(path))
        return data, lines
    if not isinstance(base_name, str):
        raise ConfigError(f"{path}:{lines.get(('extends',))}: extends must be a target name or path", "e.g. 'extends: snapdragon8'")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself", "remove the cycle")
    if "/" in base_name or base_name.endswith((".yaml", ".yml")):
        base_path = (path.parent / base_name) if not Path(base_name).is_absolute() else Path(base_name)
        base_path = _resolve("targets", str(base_path))
    else:
        try:
            base_path = _resolve("targets", base_name)
        except ConfigError as exc:
            raise ConfigError(f"{path}:{lines.get(('extends',))}: extends: {exc.message}", exc.hint) from None
    base, _ = _read_with_extends(base_path, seen + (path.resolve(),))
    merged = _deep_merge(base, data)
    merged["name"] = data.get("name", _name_from_file(path))
    return merged, lines


def _name_from_file(path: Path) -> str:
    """A target's default name: its file's stem, with characters unsafe in paths replaced."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).lstrip("._-")[:64] or "target"


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value  # lists and scalars replace
    return out

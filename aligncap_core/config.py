"""The one config loader: typed dataclasses from (YAML) dicts and back.

Every config of the library (TeacherConfig / StudentConfig, ImproveConfig, DPORoundConfig,
AugmentConfig, AblationConfig) is a dataclass read by `from_dict`: unknown keys at any depth are
a ConfigError naming the dotted key and the known ones (`train.lrr`, `improve.dpo.betta`), a
value of the wrong type names its key, a nested section keeps its field's own defaults. The
dataclass then checks its ranges in `__post_init__`. The flows' parameter models validate by
calling the same `from_dict` (flows/params.py), and the shared defaults live in
`aligncap_core.defaults`.

    cfg = from_dict(TeacherConfig, {"train": {"max_steps": 10}})
    cfg = load_config(TeacherConfig, "teacher.yaml", **{"train.lr": 1e-3})
    dump_config(cfg, "run/config.yaml")          # to_dict(cfg) as YAML; from_dict reads it back
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from aligncap_core.errors import ConfigError

C = TypeVar("C")


def from_dict(cls: type[C], data: dict[str, Any] | None, path: str = "") -> C:
    """Build dataclass `cls` from a (YAML) dict; nested dataclasses from nested dicts.

    path: the dotted prefix of `cls`'s keys in error messages ("improve." names
    `improve.n`). Unknown keys raise ConfigError naming the dotted key and the known ones; a
    value of the wrong type raises ConfigError naming the key. Missing keys take the field
    default; in a nested section, the default of *that field* (TeacherConfig's `train` keeps its
    teacher defaults when only `train.max_steps` is given).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path.rstrip('.') or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ConfigError(f"unknown config key {path + str(unknown[0])!r} "
                          f"(known: {', '.join(known)})")
    kwargs = {}
    for k, v in data.items():
        factory = known[k].default_factory
        if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict) and factory is not dataclasses.MISSING:
            # a nested section keeps its field's own defaults (the teacher's `train` section
            # defaults differ from a bare TrainConfig's); the given keys go on top
            v = _deep_merge(to_dict(factory()), v)
        kwargs[k] = _coerce(hints[k], v, f"{path}{k}")
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_SCALARS = {bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            str: lambda v: isinstance(v, str)}


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """`value` checked against the annotation `tp` (ints accepted, and converted, for floats)."""
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, name + ".")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, name)
    if origin is tuple:  # tuple[T, ...]: any length; tuple[T1, T2]: exactly that many
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        elems = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        if len(elems) != len(value):
            raise ConfigError(f"{name} must be a list of {len(elems)} values, got {value!r}")
        return tuple(_coerce(t, v, name) for t, v in zip(elems, value, strict=True))
    if origin is list or tp is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{name}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return {k: _coerce(args[1], v, f"{name}.{k}") if args else v for k, v in value.items()}
    if tp not in _SCALARS:
        raise TypeError(f"{name}: config fields of type {tp!r} are not supported by from_dict")
    if not _SCALARS[tp](value):
        raise ConfigError(f"{name} must be {tp.__name__}, got {value!r}")
    return float(value) if tp is float else value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) that `yaml.safe_dump` writes and `from_dict` reads back."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def load_config(cls: type[C], path: str | Path | None, **overrides: Any) -> C:
    """`cls` from a YAML file (None: defaults) with `overrides` applied on top.

    overrides: dotted keys (`"train.max_steps": 10`) or top-level names; None values are skipped
    (CLI options the user did not give).
    """
    from aligncap_core.utils import read_yaml_mapping, set_dotted

    data = read_yaml_mapping(path) if path is not None else {}
    set_dotted(data, overrides)
    return from_dict(cls, data)


def dump_config(cfg: Any, path: str | Path) -> Path:
    from aligncap_core.utils import atomic_write

    with atomic_write(path) as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    return Path(path)

"""Load params.yaml once, validate each section into a frozen dataclass.

Unknown keys, missing keys and wrong types fail loudly, naming the key path.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path

import yaml

PARAMS_FILE = Path(os.environ.get("PIPELINE_PARAMS", "params.yaml"))


class ParamsError(ValueError):
    """Invalid params.yaml content; the message names the key."""


def read_params(path: Path | str = PARAMS_FILE) -> dict:
    path = Path(path)
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    return data


def load_section(name: str, cls: type, path: Path | str = PARAMS_FILE):
    """Return params.yaml[name] converted to the frozen dataclass `cls`."""
    data = read_params(path)
    if name not in data:
        raise ParamsError(f"{path}: missing section '{name}'")
    return from_dict(cls, data[name], name)


def from_dict(cls: type, raw, where: str):
    if not isinstance(raw, dict):
        raise ParamsError(f"'{where}' must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(f"unknown key(s) {unknown} in '{where}'; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for fname, field in fields.items():
        key = f"{where}.{fname}"
        if fname not in raw:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ParamsError(f"missing key '{key}'")
            continue
        values[fname] = _convert(hints[fname], raw[fname], key)
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ParamsError as exc:
            raise ParamsError(f"invalid '{where}': {exc}") from None
    return obj


def _convert(tp, value, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ParamsError:
                pass
        raise ParamsError(f"'{key}': {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ParamsError(f"'{key}': {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"'{key}' must be a list, got {value!r}")
        inner = args[0] if args else typing.Any
        return tuple(_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is typing.Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"'{key}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"'{key}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"'{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"'{key}' must be a string, got {value!r}")
        return value
    raise ParamsError(f"'{key}': unsupported type {tp}")

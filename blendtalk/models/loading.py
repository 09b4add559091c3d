"""Reading a checkpoint folder (config.json + model.safetensors) strictly and within bounds.

config.json comes from wherever the checkpoint came from (a Hub repo, a download), and its numbers
decide how much memory building the model takes: `num_vertices: 100000000` would allocate tens of
GB before a single weight is read. So the model is first built on the meta device (shapes only, no
memory), its tensor names and shapes are compared with the safetensors header, and only a model
that matches the stored weights is built for real. Every way a folder can be wrong is a ValueError
naming the file (FileNotFoundError for a missing file).

The meta device makes sizes free but not counts or Python-side work, so before that build:
* every field must have its dataclass type (an int is not a bool, a float, or text; floats are finite),
* no integer may exceed every stored tensor dimension (and SIZE_FLOOR): `num_heads: 2**28` would
  otherwise make a Python list of 2**28 ALiBi slopes, whatever the device,
* the build may make only CALLS_PER_TENSOR torch calls per stored tensor: `num_layers: 100000`
  would otherwise build 100,000 layers (minutes) before the shapes could disagree.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torch.overrides import TorchFunctionMode

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MAX_CONFIG_BYTES = 1_000_000  # a config.json is a few hundred bytes; a huge one is not a config
MAX_LISTED = 5  # mismatching tensors named in an error message
SIZE_FLOOR = 2**16  # config integers up to this need no stored dimension as large (chunk sizes, windows, periods)
CALLS_PER_TENSOR = 64  # torch calls a meta build may make per stored tensor (measured: 5-9 for every blendtalk model)
CALLS_FLOOR = 1024  # torch calls allowed on top, for a model with very few tensors

# What a config dataclass or a model constructor raises for values of the wrong type or range
# (e.g. a string where an int belongs, a negative size on the meta device).
_CONFIG_ERRORS = (TypeError, ValueError, AttributeError, RuntimeError, OverflowError)


def checkpoint_files(folder: str | Path, title: str) -> tuple[Path, Path]:
    """(config.json, model.safetensors) of `folder`; FileNotFoundError when either is missing."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{title} checkpoint file missing: {path} (a checkpoint folder holds "
                                    f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    return config_path, weights_path


def read_json_object(path: Path) -> dict:
    """A small JSON file holding an object; ValueError naming the file for anything else."""
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size} bytes; a config.json is a small JSON object")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, an int of > 4300 digits, deep nesting
        raise ValueError(f"{path} is not valid JSON ({str(err)[:200]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    return raw


def read_config(config_path: Path, model_type: str) -> dict:
    """The fields of a config.json (a JSON object whose model_type, if any, is `model_type`)."""
    raw = read_json_object(config_path)
    if raw.pop("model_type", model_type) != model_type:
        raise ValueError(f"{config_path} is not a {model_type} config")
    return raw


def stored_shapes(weights_path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from a safetensors header, without reading the tensors."""
    try:  # safe_open rejects a file shorter than its header says (truncated downloads)
        with safe_open(str(weights_path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError
        raise ValueError(f"{weights_path} is not a readable safetensors file ({err}); download or save it again") from None


def check_checkpoint(folder: str | Path, model_type: str, title: str, config_cls: type,
                     build: Callable[[object], nn.Module]):
    """Validate a checkpoint folder without allocating the model; returns its config.

    config_cls: the config dataclass config.json's fields fill (`dataclass_from_dict`, after
    `check_field_types`). build: config -> the model (called on the meta device here). Raises
    ValueError when config.json does not describe a valid model or when the stored tensors' names
    or shapes differ from that model's.
    """
    config_path, weights_path = checkpoint_files(folder, title)
    raw = read_config(config_path, model_type)
    stored = stored_shapes(weights_path)  # the header only
    check_field_types(raw, config_cls, str(config_path))
    check_sizes(raw, stored, str(config_path))
    try:
        config = dataclass_from_dict(config_cls, raw, str(config_path))
        # no_grad outermost: when the budget stops a build inside an init's no_grad block, that block's
        # restoring call is refused too; the outer block then restores grad mode after the budget is gone.
        with (torch.no_grad(), torch.device("meta"), _CallBudget(CALLS_PER_TENSOR * len(stored) + CALLS_FLOOR, len(stored)),
              _SkipRandomInit()):
            skeleton = build(config)
    except _CONFIG_ERRORS as err:
        raise ValueError(f"{config_path} is not a valid {title} config: {err}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if stored != expected:
        missing = sorted(set(expected) - set(stored))
        unexpected = sorted(set(stored) - set(expected))
        shapes = [f"{k} {stored[k]} != {expected[k]}" for k in sorted(set(stored) & set(expected))
                  if stored[k] != expected[k]]
        parts = [f"{what} {items[:MAX_LISTED]}" + (" ..." if len(items) > MAX_LISTED else "")
                 for what, items in (("missing", missing), ("unexpected", unexpected), ("shapes", shapes)) if items]
        raise ValueError(f"{weights_path} does not match {config_path}: " + "; ".join(parts))
    return config


def load_checkpoint(folder: str | Path, model_type: str, title: str, config_cls: type,
                    build: Callable[[object], nn.Module], skeleton: Callable[[object], nn.Module] | None = None) -> nn.Module:
    """`check_checkpoint`, then build the model for real and load every tensor strictly.

    skeleton: builds the model for the check when `build` needs something real (default `build`).
    """
    config = check_checkpoint(folder, model_type, title, config_cls, skeleton or build)
    _, weights_path = checkpoint_files(folder, title)
    with _SkipRandomInit():  # every parameter is replaced by a stored tensor just below
        model = build(config)
    try:
        # Copied into the module's own tensors, not assigned: load_file maps the file, and its tensors
        # sit at the file's offsets, unaligned, which moved the speech model's output by ~4e-9 m.
        model.load_state_dict(load_file(weights_path), strict=True)
    except Exception as err:  # a file changed between the check and the load, or a bad tensor body
        raise ValueError(f"{weights_path} could not be loaded ({err})") from None
    return model


def dataclass_from_dict(config_cls: type, raw: dict, where: str = CONFIG_NAME):
    """The dataclass `config_cls` from JSON fields `raw`; a field it does not know is a ValueError
    (a config written by a newer blendtalk must not load as something else)."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    if unknown := sorted(set(raw) - known):
        raise ValueError(f"{where} has unknown fields {unknown}; this blendtalk knows {sorted(known)}")
    return config_cls(**raw)


# ---------------------------------------------------------------------------------------------
# Checks that keep a hostile config.json from costing time or memory before the shape comparison


def check_field_types(raw: dict, config_cls: type, where: str) -> None:
    """Each field of `raw` (JSON) has its type in the dataclass `config_cls`, nested dataclasses
    included; fields the dataclass does not know are left to it. ValueError naming the field."""
    hints = typing.get_type_hints(config_cls)
    for name, value in raw.items():
        if name in hints and not _fits(value, hints[name], f"{where}: {name}"):
            raise ValueError(f"{where}: field {name!r} must be {_describe(hints[name])}, got {json.dumps(value)[:80]}")


def _fits(value, hint, where: str) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg, where) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if origin in (tuple, list) or hint in (tuple, list):
        item = args[0] if args else typing.Any
        return isinstance(value, (list, tuple)) and all(_fits(v, item, where) for v in value)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            check_field_types(value, hint, where)  # raises with the nested field's name
            return True
        return isinstance(value, hint)
    return True  # typing.Any and anything this check does not model


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint):
        return f"an object of {hint.__name__} fields"
    if typing.get_origin(hint) in (tuple, list):
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
            dict: "an object"}.get(hint, str(hint))


def check_sizes(raw, stored: dict[str, tuple[int, ...]], where: str) -> None:
    """No integer anywhere in `raw` may exceed max(SIZE_FLOOR, the largest stored dimension) in size:
    a model's sizes show up in its tensors' shapes, and a larger number only costs time or memory."""
    limit = max([SIZE_FLOOR, *(d for shape in stored.values() for d in shape)])
    for path, value in _integers(raw, ""):
        if abs(value) > limit:
            raise ValueError(f"{where}: {path} = {value} exceeds every tensor dimension stored beside it "
                             f"(largest {limit}); this config does not describe these weights")


def _integers(value, path: str):
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _integers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _integers(v, f"{path}[{i}]")


class _SkipRandomInit(TorchFunctionMode):
    """Random fills (`uniform_`, `normal_`: every torch.nn.init scheme ends in one) leave the
    tensor as it is: a model built to receive stored weights needs no random start. Measured on the
    2-core CPU: 0.1 s of a pipeline load, and on the meta device `normal_` alone imported
    torch._dynamo (1-3.5 s). Non-random fills (zeros, constants) still run: a non-persistent buffer
    may be made of them."""

    # The init functions that torch lets a mode override are caught whole: this mode is off inside
    # the calls it passes on, so the fill within them would not be seen.
    _SKIPPED = frozenset({torch.Tensor.uniform_, torch.Tensor.normal_, nn.init.uniform_, nn.init.normal_,
                          nn.init.trunc_normal_, nn.init.kaiming_uniform_, nn.init.kaiming_normal_,
                          nn.init.xavier_uniform_, nn.init.xavier_normal_, nn.init.orthogonal_})

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        if func in self._SKIPPED:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


class _CallBudget(TorchFunctionMode):
    """Counts the torch calls of a meta-device build and stops it past `limit` (a ValueError)."""

    def __init__(self, limit: int, stored: int):
        super().__init__()
        self.limit, self.stored, self.calls = limit, stored, 0

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        self.calls += 1
        if self.calls > self.limit:
            raise ValueError(f"building it takes more than {self.limit} torch calls, far more than {self.stored} "
                             "stored tensors need (too many layers or blocks for these weights)")
        return func(*args, **(kwargs or {}))

"""Reading a checkpoint folder (config.json + model.safetensors) strictly and within bounds.

config.json comes from wherever the checkpoint came from (a Hub repo, a download), and its numbers
decide how much memory building the model takes: `num_vertices: 100000000` would allocate tens of
GB before a single weight is read. So the model is first built on the meta device (shapes only, no
memory), its tensor names and shapes are compared with the safetensors header, and only a model
that matches the stored weights is built for real. Every way a folder can be wrong is a ValueError
naming the file (FileNotFoundError for a missing file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MAX_CONFIG_BYTES = 1_000_000  # a config.json is a few hundred bytes; a huge one is not a config
MAX_LISTED = 5  # mismatching tensors named in an error message

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


def read_config(config_path: Path, model_type: str) -> dict:
    """The fields of a config.json (a JSON object whose model_type, if any, is `model_type`)."""
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{config_path} is {config_path.stat().st_size} bytes; a config.json is a small JSON object")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{config_path} must hold a JSON object, got {type(raw).__name__}")
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


def check_checkpoint(folder: str | Path, model_type: str, title: str, make_config: Callable[[dict], object],
                     build: Callable[[object], nn.Module]):
    """Validate a checkpoint folder without allocating the model; returns its config.

    make_config: config.json's fields -> the config dataclass. build: config -> the model (called
    on the meta device here). Raises ValueError when config.json does not describe a valid model
    or when the stored tensors' names or shapes differ from that model's.
    """
    config_path, weights_path = checkpoint_files(folder, title)
    raw = read_config(config_path, model_type)
    try:
        config = make_config(raw)
        with torch.device("meta"):
            skeleton = build(config)
    except _CONFIG_ERRORS as err:
        raise ValueError(f"{config_path} is not a valid {title} config: {err}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    stored = stored_shapes(weights_path)
    if stored != expected:
        missing = sorted(set(expected) - set(stored))
        unexpected = sorted(set(stored) - set(expected))
        shapes = [f"{k} {stored[k]} != {expected[k]}" for k in sorted(set(stored) & set(expected))
                  if stored[k] != expected[k]]
        parts = [f"{what} {items[:MAX_LISTED]}" + (" ..." if len(items) > MAX_LISTED else "")
                 for what, items in (("missing", missing), ("unexpected", unexpected), ("shapes", shapes)) if items]
        raise ValueError(f"{weights_path} does not match {config_path}: " + "; ".join(parts))
    return config


def load_checkpoint(folder: str | Path, model_type: str, title: str, make_config: Callable[[dict], object],
                    build: Callable[[object], nn.Module], skeleton: Callable[[object], nn.Module] | None = None) -> nn.Module:
    """`check_checkpoint`, then build the model for real and load every tensor strictly.

    skeleton: builds the model for the check when `build` needs something real (default `build`).
    """
    config = check_checkpoint(folder, model_type, title, make_config, skeleton or build)
    _, weights_path = checkpoint_files(folder, title)
    model = build(config)
    try:
        model.load_state_dict(load_file(weights_path), strict=True)
    except Exception as err:  # a file changed between the check and the load, or a bad tensor body
        raise ValueError(f"{weights_path} could not be loaded ({err})") from None
    return model

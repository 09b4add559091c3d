"""One checkpoint format for every blendtalk model: a folder of config.json + model.safetensors +
README.md (a model card), written atomically and read strictly (blendtalk.models.loading).

`PretrainedModel` gives a model with a dataclass `config` its `save_pretrained` and
`from_pretrained`; `save_folder` writes any such folder (the rig maps use it too). `pick_device`
and `file_sha256` are the one place where blendtalk chooses a device and hashes a file;
`cpu_threads` narrows torch's CPU threads for work too small to share out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable, ClassVar

import torch
from safetensors.torch import save_file
from torch import nn

from . import loading
from .loading import CONFIG_NAME, WEIGHTS_NAME

CARD_NAME = "README.md"


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' (or None: cuda when available, else cpu) -> a torch.device this torch can use.

    Raises ValueError for names torch does not know and for CUDA devices it cannot see, so the
    mistake is reported before anything is loaded.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r} ({err}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r} asked for, but this torch sees no CUDA GPU; use 'cpu'")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r} asked for, but this torch sees {count} CUDA GPU(s): cuda:0..cuda:{count - 1}")
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return dev


@contextlib.contextmanager
def cpu_threads(count: int):
    """Run torch's CPU operations inside the block on at most `count` threads, then restore the count.

    For many small operations in a row (a speech model's frame-by-frame loop, a renderer's per-frame
    geometry beside the rasterizer's own threads): a second thread only adds a hand-off per
    operation, and when the other core is busy, its spin-waits cost several times the work itself.
    torch keeps the count per thread (OpenMP): threads that already ran torch work keep theirs.
    """
    before = torch.get_num_threads()
    if before <= count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_folder(folder: str | Path, config: dict, tensors: dict[str, torch.Tensor], card: str,
                metadata: dict[str, str] | None = None) -> Path:
    """Write config.json, model.safetensors and README.md into `folder`, each file whole.

    The files are staged in a hidden folder beside it and renamed in one by one, config.json last:
    a kill mid-save leaves each file either the old version or the new one, and at worst the
    staging folder, which the next save replaces. Other files in `folder` are left alone.
    """
    folder = Path(folder)
    stage = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(state, stage / WEIGHTS_NAME, metadata={"format": "pt", **(metadata or {})})
    (stage / CARD_NAME).write_text(card)
    (stage / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    folder.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_NAME, CARD_NAME, CONFIG_NAME):
        os.replace(stage / name, folder / name)
    stage.rmdir()
    return folder


class PretrainedModel(nn.Module):
    """Base of the saved models: subclasses set MODEL_TYPE, TITLE and CONFIG (their config dataclass),
    keep their config in `self.config`, and describe themselves in `model_card()`."""

    MODEL_TYPE: ClassVar[str]
    TITLE: ClassVar[str]
    CONFIG: ClassVar[type]
    config: object

    def model_card(self) -> str:
        raise NotImplementedError

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write config.json, model.safetensors (persistent tensors only) and a README.md model card, atomically."""
        config = {"model_type": self.MODEL_TYPE, **asdict(self.config)}
        return save_folder(folder, config, self.state_dict(), self.model_card(), {"model_type": self.MODEL_TYPE})

    @classmethod
    def _load(cls, folder: str | Path, build: Callable, skeleton: Callable | None = None,
              device: str | torch.device | None = None):
        model = loading.load_checkpoint(folder, cls.MODEL_TYPE, cls.TITLE, cls.CONFIG, build, skeleton=skeleton)
        return model.to(device) if device is not None else model

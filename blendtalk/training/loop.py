"""What both training loops (the DFM's and the speech model's) share: the process set-up under
torchrun, run folders, the learning-rate schedule, stopping together, and resumable state.

`run_loop` is the one loop: each step asks the model's trainer for a loss (`train_step`, which draws
its own batch), takes an optimiser step, and at each validation asks it for a report and a score
(`validate`; lower is better). A run is a folder that is never reused or deleted. After each validation the loop appends a line
to metrics.jsonl, saves checkpoint/ (and best/) with `save_pretrained`, then state.pt: the weights,
the optimiser, the step, the best score and every random state the batches and dropout draw from,
written under a temporary name and renamed. A run killed at any moment resumes from state.pt as if
it had not stopped; `trim_metrics` drops the lines logged after that step (computed again).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..models.checkpoint import pick_device


def setup_process(device: str | None) -> tuple[bool, int, torch.device]:
    """(distributed, rank, device): under torchrun (WORLD_SIZE > 1) joins the process group and takes
    the local GPU (or the CPU); otherwise `pick_device(device)`."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    if not distributed:
        return False, rank, pick_device(device)
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return True, rank, dev


def new_run_dir(out: str | Path, name: str) -> Path:
    """A new folder `<out>/<name>-<date>-<time>[-k]`; never an existing one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        run = Path(out) / (f"{name}-{stamp}" + (f"-{k}" if k else ""))
        try:
            run.mkdir(parents=True, exist_ok=False)
            return run
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder in {out}")


def progress(step: int, total: int, started: float, max_minutes: float | None) -> float:
    """Fraction of the run done, in [0, 1]: by steps, or by wall time when that ends it sooner."""
    done = step / max(total, 1)
    if max_minutes:
        done = max(done, (time.time() - started) / (60 * max_minutes))
    return min(done, 1.0)


def set_cosine_lr(opt: torch.optim.Optimizer, lr: float, done: float) -> None:
    """Cosine decay from `lr` to 0 as `done` goes from 0 to 1."""
    for group in opt.param_groups:
        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * done))


def out_of_time(started: float, max_minutes: float | None, distributed: bool, device) -> bool:
    """Past the time budget, on any process: every process must stop at the same step, or DDP waits forever."""
    late = max_minutes is not None and time.time() - started > 60 * max_minutes
    if distributed:
        flag = torch.tensor(float(late), device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        late = bool(flag)
    return late


def append_metrics(run: Path, line: dict) -> None:
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def random_state(generator: torch.Generator | None = None, rng: np.random.Generator | None = None) -> dict:
    """Every random state a loop draws from: torch's (CPU and, if used, CUDA), a torch generator, a
    numpy generator. Tensors and plain numbers only, so state.pt loads with weights_only."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    if rng is not None:
        state["numpy"] = json.dumps(rng.bit_generator.state)  # 128-bit integers: kept exact as text
    return state


def restore_random_state(state: dict, generator: torch.Generator | None = None,
                         rng: np.random.Generator | None = None) -> None:
    """Put back what `random_state` saved (the parts this loop uses)."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())
    if rng is not None and "numpy" in state:
        rng.bit_generator.state = json.loads(state["numpy"])


def save_state(path: Path, **state) -> None:
    """torch.save(state) to `path` under a temporary name, then an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(run: Path | None, device) -> dict:
    """A run's state.pt (tensors only: weights_only); FileNotFoundError when there is none."""
    if run is None or not (run / "state.pt").is_file():
        raise FileNotFoundError(f"nothing to resume in {run}: no state.pt")
    return torch.load(run / "state.pt", map_location=device, weights_only=True)


def trim_metrics(path: Path, step: int) -> None:
    """Keep the metrics lines up to `step` (a resumed run computes the later ones again) and drop a
    torn last line; rewritten atomically."""
    if not path.is_file():
        return
    keep = []
    for text in path.read_text().splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(line, dict) and line.get("step", 0) <= step:
            keep.append(text + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


@dataclass
class Loop:
    """One run's loop: the model (saved with save_pretrained), what the optimiser updates, where and how long."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    run: Path | None  # None on ranks other than 0, which never write
    device: torch.device
    total: int  # steps of the whole run
    steps_per_epoch: int
    val_every: int
    lr: float
    lr_schedule: str  # "constant" or "cosine"
    max_minutes: float | None
    distributed: bool = False
    rank: int = 0
    desc: str = "train"


def run_loop(loop: Loop, train_step: Callable[[], tuple[torch.Tensor, dict]],
             validate: Callable[[dict], tuple[dict, float, dict]], saved_random: Callable[[], dict],
             step: int = 0, best: float = math.inf) -> int:
    """Train from `step` to `loop.total` (or the time budget); returns the last step.

    train_step() -> (loss, its parts as numbers). validate(parts) -> (report, score, more fields for
    the metrics line). saved_random() -> the random states to put in state.pt (`random_state`).
    """
    started = time.time()
    bar = tqdm(total=loop.total, initial=step, desc=loop.desc, disable=loop.rank != 0, unit="step")
    while step < loop.total:
        if loop.lr_schedule == "cosine":
            set_cosine_lr(loop.opt, loop.lr, progress(step, loop.total, started, loop.max_minutes))
        loss, parts = train_step()
        loop.opt.zero_grad(set_to_none=True)
        loss.backward()
        loop.opt.step()
        step += 1
        bar.update()
        late = out_of_time(started, loop.max_minutes, loop.distributed, loop.device)
        if loop.rank == 0 and (step % loop.val_every == 0 or step == loop.total or late):
            report, score, more = validate(parts)
            append_metrics(loop.run, {"step": step, "epoch": step / loop.steps_per_epoch,
                                      "minutes": (time.time() - started) / 60, "loss": parts, "val": report, **more})
            bar.set_postfix(loss=f"{parts['total']:.4f}", val=f"{score:.4f}")
            if score < best:
                best = score
                loop.model.save_pretrained(loop.run / "best")
            loop.model.save_pretrained(loop.run / "checkpoint")
            save_state(loop.run / "state.pt", model=loop.model.state_dict(), optimizer=loop.opt.state_dict(),
                       random=saved_random(), step=step, best=best)
        if late:
            break
    bar.close()
    return step

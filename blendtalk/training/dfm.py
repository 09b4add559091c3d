"""Training of the deformation fusion module: data, loop, validation, resumable checkpoints, DDP.

A run is a folder (never reused or deleted):
    train_config.json      the DFMTrainConfig
    checkpoint/            the latest model (config.json + model.safetensors)
    state.pt               the same weights with optimiser and sampler state and step, for --resume
                           (tensors only, loaded with weights_only)
    best/                  the model with the best validation score so far
    metrics.jsonl          one line per validation
A run killed at any moment (SIGKILL, power loss) resumes from its last state.pt with nothing
lost: every file is written under a temporary name and renamed when complete, state.pt last, and
a resume drops the metrics lines after its step (they are computed again).
Under `torchrun --nproc_per_node=N` each process trains on its own batches with
DistributedDataParallel; rank 0 validates and writes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.datasets import ExpressionDataset, SpeechDataset
from ..data.florence import read_florence
from ..data.vocaset import read_vocaset
from ..evaluation.fusion import evaluate_fusion, fusion_cases, synthetic_split
from ..face.geometry import load_square_map, uniform_laplacian
from .losses import DFMLossConfig, dfm_loss, vertex_weights
from ..models.dfm import DeformationFusionModule, DFMConfig, interpolate_inputs
from ..face.rig import FaceRig, load_rig


@dataclass
class DFMTrainConfig:
    data: str = "data/synth"  # synthetic corpus root (speech/, expression/, truth/); generated if missing
    speech_root: str | None = None  # a real VOCASET root instead of data/speech
    expression_root: str | None = None  # a real Florence4D root instead of data/expression
    out: str = "runs"  # runs are created inside; earlier runs are never touched
    model: DFMConfig | None = None  # filled from the rig when None (num_vertices)
    loss: DFMLossConfig = field(default_factory=DFMLossConfig)
    lr: float = 3e-4  # Adam, as in the paper
    lr_schedule: str = "constant"  # or "cosine": decay to 0 over the run (its epochs or max_minutes, whichever ends first)
    crop_loss: bool = False  # score reconstruction only inside the rig's face crop (all the geometric map sees)
    batch_size: int = 128  # as in the paper (per process under DDP)
    epochs: float = 20.0  # the paper trains 4000; an epoch covers every frame of the larger corpus once
    max_minutes: float | None = None  # stop (and save) after this wall time, whatever the epoch
    val_every: int = 500  # steps between validations
    val_sentences: int = 8  # per held-out speaker, for the fusion validation on synthetic truth
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    init: str | None = None  # a DFM checkpoint folder to start from (adapting a model to new data), else random


def load_train_config(run: str | Path) -> DFMTrainConfig:
    """The DFMTrainConfig saved in a run folder (for --resume: the run goes on as it was configured)."""
    path = Path(run) / "train_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run} is not a DFM run folder")
    raw = json.loads(path.read_text())
    raw["model"] = DFMConfig(**raw["model"]) if raw.get("model") else None
    raw["loss"] = DFMLossConfig(**raw.get("loss", {}))
    return DFMTrainConfig(**raw)


def pick_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _preload(ds, device) -> torch.Tensor:
    """All frames of a single-frame dataset as one (M, V, 3) float32 tensor on `device`."""
    chunks = [torch.from_numpy(ds.displacements(np.arange(i, min(i + 4096, len(ds))))[:, 0])
              for i in range(0, len(ds), 4096)]
    return torch.cat(chunks).to(device)


def load_frames(config: DFMTrainConfig, subset: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Speech (M_s, V, 3) and expression (M_e, V, 3) displacement frames of a subset, on device."""
    speech_index = read_vocaset(config.speech_root or Path(config.data) / "speech")
    expr_index = read_florence(config.expression_root or Path(config.data) / "expression")
    speech_split = synthetic_split([s.subject for s in speech_index.sequences])
    expr_split = synthetic_split([s.subject for s in expr_index.sequences])
    speech = SpeechDataset(speech_index.sequences, speech_split, subset, window=1, with_audio=False)
    expr = ExpressionDataset(expr_index.sequences, expr_split, subset, window=1)
    return _preload(speech, device), _preload(expr, device)


def build_model(rig: FaceRig, model_config: DFMConfig, device) -> DeformationFusionModule:
    smap = load_square_map(rig, size=model_config.map_size) if model_config.use_geometric_map else None
    return DeformationFusionModule(model_config, smap.matrix() if smap else None).to(device)


def new_run_dir(out: str | Path, name: str = "dfm") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        run = Path(out) / (f"{name}-{stamp}" + (f"-{k}" if k else ""))
        try:
            run.mkdir(parents=True, exist_ok=False)
            return run
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder in {out}")


def save_checkpoint(model: DeformationFusionModule, folder: Path) -> None:
    """`model.save_pretrained(folder)` where each file appears whole: staged beside it, then renamed.

    A kill mid-save leaves every file of `folder` either the old version or the new one (the config
    does not change during a run), and at worst a `.name.tmp` folder that the next save replaces.
    """
    stage = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(stage, ignore_errors=True)
    model.save_pretrained(stage)
    folder.mkdir(exist_ok=True)
    for f in sorted(stage.iterdir()):
        os.replace(f, folder / f.name)
    stage.rmdir()


def save_state(path: Path, **state) -> None:
    """torch.save(state) to `path` under a temporary name, then an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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


def validate(model: DeformationFusionModule, config: DFMTrainConfig, rig: FaceRig, device) -> dict:
    """Fusion metrics on the validation speakers/subjects (needs synthetic truth)."""
    truth = Path(config.data) / "truth"
    if config.speech_root or not truth.is_dir():
        return {}
    model.eval()
    cases = list(fusion_cases(config.data, "val", max_sentences=config.val_sentences))
    report = evaluate_fusion({"dfm": model.fuse, "interpolation": interpolate_inputs}, cases, rig, device)
    model.train()
    return report


def mix_speech(d_s: torch.Tensor, d_e: torch.Tensor, max_scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Speech frames d_s (B, V, 3), expression frames d_e (B', V, 3) -> (B', V, 3): each expression frame plus
    a random speech frame scaled by its own U(0, max_scale) (the inputs of the invariance prior)."""
    i = torch.randint(len(d_s), (len(d_e),), device=d_e.device, generator=generator)
    scale = torch.rand(len(d_e), 1, 1, device=d_e.device, generator=generator) * max_scale
    return d_e + scale * d_s[i]


def _progress(step: int, total: int, started: float, max_minutes: float | None) -> float:
    """Fraction of the run done, in [0, 1]: by steps, or by wall time when that ends it sooner."""
    done = step / max(total, 1)
    if max_minutes:
        done = max(done, (time.time() - started) / (60 * max_minutes))
    return min(done, 1.0)


def train_dfm(config: DFMTrainConfig, run_dir: str | Path | None = None, resume: bool = False) -> Path:
    """Train (or resume) a DFM; returns the run folder."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        device = pick_device(config.device)
    rig = load_rig()
    if config.model is None:
        config.model = DFMConfig(num_vertices=rig.num_vertices)
    torch.manual_seed(config.seed + rank)
    rng = torch.Generator(device=device).manual_seed(config.seed + rank)

    speech, expr = load_frames(config, "train", device)
    if speech.shape[1] != config.model.num_vertices:
        raise ValueError(f"the data has V={speech.shape[1]} vertices but the model expects {config.model.num_vertices}")
    model = build_model(rig, config.model, device)
    if config.init is not None and not resume:  # strict: the folder's config must be the run's model config
        model.load_state_dict(DeformationFusionModule.from_pretrained(config.init, model.map_matrix).state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    if config.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {config.lr_schedule!r}")
    crop = torch.as_tensor(rig.mask("face_crop")) if config.crop_loss else None
    lip_w = vertex_weights(rig.num_vertices, torch.as_tensor(rig.mask("lips")), config.loss.lip_weight, crop).to(device)
    lap = uniform_laplacian(rig.num_vertices, torch.as_tensor(rig.triangles), device=device) if config.loss.lambda_lap else None
    upper = torch.as_tensor(rig.mask("upper_face"), device=device)

    run = Path(run_dir) if run_dir is not None else None
    step, best = 0, math.inf
    if resume:
        if run is None or not (run / "state.pt").is_file():
            raise FileNotFoundError(f"nothing to resume in {run}: no state.pt")
        state = torch.load(run / "state.pt", map_location=device, weights_only=True)
        if "model" in state:  # the weights saved with this step (runs before it: checkpoint/, saved just before)
            model.load_state_dict(state["model"])
        else:
            model.load_state_dict(DeformationFusionModule.from_pretrained(run / "checkpoint", model.map_matrix).state_dict())
        opt.load_state_dict(state["optimizer"])
        if "rng" in state and not distributed:  # the batches go on as if the run had not stopped (rank 0's state)
            rng.set_state(state["rng"].cpu())
        step, best = int(state["step"]), float(state["best"])
        if rank == 0:
            trim_metrics(run / "metrics.jsonl", step)
    elif rank == 0:
        run = run or new_run_dir(config.out)
        (run / "train_config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
    net = model
    if distributed:  # the geometric map is a fixed sparse buffer, the same on every rank: DDP must not broadcast it
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ["map_matrix"])
        net = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)

    steps_per_epoch = max(len(speech), len(expr)) // config.batch_size
    total = int(config.epochs * steps_per_epoch)
    started = time.time()
    bar = tqdm(total=total, initial=step, desc="train dfm", disable=rank != 0, unit="step")
    parts = {}
    while step < total:
        i_s = torch.randint(len(speech), (config.batch_size,), device=device, generator=rng)
        i_e = torch.randint(len(expr), (config.batch_size,), device=device, generator=rng)
        d_s, d_e = speech[i_s], expr[i_e]
        d_mixed = mix_speech(d_s, d_e, config.loss.invariance_mix, rng) if config.loss.lambda_invariance else None
        if config.lr_schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * _progress(step, total, started, config.max_minutes)))
        loss, parts = dfm_loss(net(d_s, d_e, d_mixed), d_s, d_e, config.loss, lip_w, lap, upper)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update()
        out_of_time = config.max_minutes is not None and time.time() - started > 60 * config.max_minutes
        if distributed:  # every process must stop at the same step, or DDP waits forever
            flag = torch.tensor(float(out_of_time), device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            out_of_time = bool(flag)
        if rank == 0 and (step % config.val_every == 0 or step == total or out_of_time):
            report = validate(model, config, rig, device)
            score = report.get("dfm", {}).get("fused_mve", parts["total"])
            line = {"step": step, "epoch": step / steps_per_epoch, "minutes": (time.time() - started) / 60, "loss": parts, "val": report}
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            bar.set_postfix(loss=f"{parts['total']:.4f}", val=f"{score:.4f}")
            if score < best:
                best = score
                save_checkpoint(model, run / "best")
            save_checkpoint(model, run / "checkpoint")
            save_state(run / "state.pt", model=model.state_dict(), optimizer=opt.state_dict(), rng=rng.get_state(), step=step,
                       best=best)
        if out_of_time:
            break
    bar.close()
    if distributed:
        torch.distributed.destroy_process_group()
    return run

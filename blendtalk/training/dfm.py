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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import ExpressionDataset, SpeechDataset
from ..data.florence import read_florence
from ..data.vocaset import read_vocaset
from ..evaluation.fusion import evaluate_fusion, fusion_cases, synthetic_split
from ..face.geometry import load_square_map, uniform_laplacian
from .loop import Loop, load_state, new_run_dir, random_state, restore_random_state, run_loop, setup_process, trim_metrics
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


def train_dfm(config: DFMTrainConfig, run_dir: str | Path | None = None, resume: bool = False) -> Path:
    """Train (or resume) a DFM; returns the run folder."""
    distributed, rank, device = setup_process(config.device)
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
        state = load_state(run, device)
        if "model" in state:  # the weights saved with this step (runs before it: checkpoint/, saved just before)
            model.load_state_dict(state["model"])
        else:
            model.load_state_dict(DeformationFusionModule.from_pretrained(run / "checkpoint", model.map_matrix).state_dict())
        opt.load_state_dict(state["optimizer"])
        if not distributed:  # the batches go on as if the run had not stopped (rank 0's state)
            if "random" in state:
                restore_random_state(state["random"], generator=rng)
            elif "rng" in state:  # runs saved before the shared loop kept only the batch generator
                rng.set_state(state["rng"].cpu())
        step, best = int(state["step"]), float(state["best"])
        if rank == 0:
            trim_metrics(run / "metrics.jsonl", step)
    elif rank == 0:
        run = run or new_run_dir(config.out, "dfm")
        (run / "train_config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
    net = model
    if distributed:  # the geometric map is a fixed sparse buffer, the same on every rank: DDP must not broadcast it
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ["map_matrix"])
        net = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)

    steps_per_epoch = max(len(speech), len(expr)) // config.batch_size

    def train_step():
        i_s = torch.randint(len(speech), (config.batch_size,), device=device, generator=rng)
        i_e = torch.randint(len(expr), (config.batch_size,), device=device, generator=rng)
        d_s, d_e = speech[i_s], expr[i_e]
        d_mixed = mix_speech(d_s, d_e, config.loss.invariance_mix, rng) if config.loss.lambda_invariance else None
        return dfm_loss(net(d_s, d_e, d_mixed), d_s, d_e, config.loss, lip_w, lap, upper)

    def validation(parts):
        report = validate(model, config, rig, device)
        return report, report.get("dfm", {}).get("fused_mve", parts["total"]), {}

    loop = Loop(model, opt, run, device, int(config.epochs * steps_per_epoch), steps_per_epoch, config.val_every,
                config.lr, config.lr_schedule, config.max_minutes, distributed, rank, "train dfm")
    run_loop(loop, train_step, validation, lambda: random_state(generator=rng), step, best)
    if distributed:
        torch.distributed.destroy_process_group()
    return run

"""Training of the speech-driven FaceFormer: whole sequences on the device, random equal-length
windows per batch, resumable runs, LVE/FDD validation, DDP.

A run is a folder (never reused or deleted), as for the DFM (blendtalk.training.dfm):
    train_config.json      the FaceFormerTrainConfig
    checkpoint/            the latest model (config.json + model.safetensors) ...
    state.pt               ... with optimiser state and step, for --resume (tensors only, weights_only)
    best/                  the model with the lowest validation score (LVE on aligned phones) so far
    metrics.jsonl          one line per validation
Under `torchrun --nproc_per_node=N` each process draws its own batches; rank 0 validates and writes.

Inputs. The phonetic encoder reads per-frame phones + log-mel (blendtalk.speech.features); they come
from a FeatureCache file, so training itself never needs pocketsphinx or librosa. Each training
window takes its phones from one source, drawn by `phone_mix`: forced-aligned phones (what users
get with a transcript), recognised phones (no transcript: about 70% phone error rate on this
TTS speech, so the model must learn to fall back on the log-mel) and, on the synthetic corpus,
the TTS's exact phones (what the text path gives). Each inference path is then in distribution.
The wav2vec2 encoder reads raw audio windows instead.

Voices. The corpus has eight eSpeak NG voices; a real voice's log-mel differs more from all of them
than they differ from each other, and a model that leans on the log-mel then misses articulations
the phones state plainly (the ARCTIC check in eval/lipsync.py). Three augmentations of the log-mel
(`augment_mel`) push the model to hear voices loosely and to trust good phones: a random stretch of
the frequency axis (vocal tract length perturbation), SpecAugment's blanked bands and time spans,
and (off by default: it did not help) windows whose whole log-mel is blanked while their phones
are aligned or exact.

Exposure bias. Teacher forcing feeds the true previous frame, inference the model's own. With
probability `self_feed` a step runs two parallel passes instead (scheduled sampling): one
teacher-forced without gradients, whose predictions are then the previous-motion inputs of the
pass that learns. This keeps training parallel over frames, unlike FaceFormer's frame-by-frame loop.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..constants import FPS, SAMPLE_RATE
from ..data.datasets import VOCASET_SPLIT, SpeechDataset, Split
from ..data.vocaset import read_vocaset
from ..models.faceformer import FaceFormer, FaceFormerConfig, build_faceformer
from ..models.audio_encoders import AudioEncoderConfig
from ..speech.phones import ARPABET, Phone
from ..face.rig import load_rig
from ..evaluation.faceformer import evaluate_model, region_masks
from ..speech.features import PHONE_SOURCES, FeatureCache

MAX_FEATURE_MISMATCH = 8  # frames (0.27 s): features vs motion length; VOCASET clips differ by a few frames
DEFAULT_CACHE_NAME = "phonetic_features.npz"


@dataclass
class FaceFormerTrainConfig:
    data: str = "data/synth"  # synthetic corpus root (speech/ and truth/); generated if missing
    vocaset: str | None = None  # a real VOCASET root (raw or FaceFormer layout) instead: FaceFormer's subject split
    features: str | None = None  # phonetic feature cache; None: <data>/phonetic_features.npz (built if missing)
    flame_masks: str | None = None  # FLAME_masks.pkl for LVE/FDD on VOCASET (lips; forehead + eye_region)
    out: str = "runs"  # runs are created inside; earlier runs are never touched
    model: FaceFormerConfig | None = None  # filled from the data (V, training speakers, encoder) when None
    encoder: str = "phonetic"  # "phonetic" (offline default) or "wav2vec2"
    wav2vec2: str | None = None  # pretrained wav2vec2 Hub id or folder; None = random init (offline)
    phone_mix: dict = field(default_factory=lambda: {"aligned": 0.5, "recognized": 0.3, "exact": 0.2})  # see module doc
    lr: float = 5e-4  # Adam; FaceFormer's 1e-4 (batch 1) reached val LVE 84 mm^2 after 186 CPU steps where 5e-4 reached 32
    lr_schedule: str = "constant"  # or "cosine": decay to 0 over the run (epochs or max_minutes, whichever ends first)
    batch_size: int = 8  # windows per step (per process under DDP); FaceFormer uses 1 whole sequence
    min_seconds: float = 2.0  # window length drawn per batch in [min, max] s, capped by the batch's shortest sequence
    max_seconds: float = 4.0
    self_feed: float = 0.5  # share of steps fed their own predictions as previous motion (module doc)
    # Log-mel augmentation (module doc). On one H200 for 5.3 min, 0.15 + 2 masks halved the held-out LVE with aligned
    # phones (14.7 -> 7.4 mm^2) and closed both ARCTIC bilabials (1 of 2 without); adding mel_dropout 0.2/0.4 did not help.
    mel_warp: float = 0.15  # frequency axis stretched by a factor in 1 +- mel_warp per window
    mel_masks: int = 2  # SpecAugment: this many frequency bands (<= 10 mels) and time spans (<= 4 frames) blanked per window
    mel_dropout: float = 0.0  # share of windows with aligned/exact phones whose whole log-mel is blanked
    lip_weight: float = 5.0  # loss weight of lip vertices (1 elsewhere); at 450 CPU steps 5 gave val LVE 20 mm^2 and 80% /p b m/ closure, 1 (FaceFormer's) 25 and 30%
    lambda_velocity: float = 0.0  # MSE of frame-to-frame differences; > 0 discourages jitter
    lambda_lip_gap: float = 0.0  # L1 on the lip-seam gap (rig only); 0.2 closed 95% of /p b m/ but cost LVE (31 vs 17 mm^2)
    motion_scale: float = 1e-3  # m per model unit (FaceFormerConfig.motion_scale): the network works in mm
    epochs: float = 200.0  # an epoch draws as many windows as there are training sequences
    max_minutes: float | None = None  # stop (and save) after this wall time, whatever the epoch
    val_every: int = 0  # steps between validations; 0 = once per epoch
    val_sequences: int = 12  # validation sequences generated (autoregressively) per validation
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    threads: int | None = None  # CPU threads per process; None: min(4, cores / processes)

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = FaceFormerConfig(**self.model)
        if self.model is not None:
            self.encoder = self.model.encoder.kind  # an explicit architecture decides which inputs are read
        if self.encoder not in ("phonetic", "wav2vec2"):
            raise ValueError(f"encoder must be 'phonetic' or 'wav2vec2', got {self.encoder!r}")
        if unknown := set(self.phone_mix) - set(PHONE_SOURCES):
            raise ValueError(f"phone_mix keys must be among {PHONE_SOURCES}, got {sorted(unknown)}")
        if any(v < 0 for v in self.phone_mix.values()) or sum(self.phone_mix.values()) <= 0:
            raise ValueError(f"phone_mix shares must be >= 0 with a positive sum, got {self.phone_mix}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(f"need 0 < min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}")
        if not 0 <= self.self_feed <= 1:
            raise ValueError(f"self_feed must be in [0, 1], got {self.self_feed}")
        if not (0 <= self.mel_warp < 0.5 and 0 <= self.mel_dropout <= 1 and self.mel_masks >= 0):
            raise ValueError(f"need 0 <= mel_warp < 0.5, 0 <= mel_dropout <= 1 and mel_masks >= 0, got "
                             f"{self.mel_warp}, {self.mel_dropout}, {self.mel_masks}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")

    def feature_path(self) -> Path:
        if self.features:
            return Path(self.features)
        return Path(self.vocaset or self.data) / DEFAULT_CACHE_NAME


def load_train_config(run: str | Path) -> FaceFormerTrainConfig:
    """The FaceFormerTrainConfig saved in a run folder (for --resume)."""
    path = Path(run) / "train_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run} is not a FaceFormer run folder")
    raw = json.loads(path.read_text())
    if raw.get("model") is not None:
        raw["model"] = FaceFormerConfig(**raw["model"])
    return FaceFormerTrainConfig(**raw)


# ---------------------------------------------------------------------------------------------
# Data: the corpus, its split, the feature cache, one subset's sequences on a device


def corpus(config: FaceFormerTrainConfig):
    """(VocaIndex, Split) of the training corpus: VOCASET with FaceFormer's split, or the synthetic one."""
    from ..evaluation.fusion import synthetic_split

    index = read_vocaset(config.vocaset or Path(config.data) / "speech")
    split = VOCASET_SPLIT if config.vocaset else synthetic_split([s.subject for s in index.sequences])
    return index, split


def corpus_clips(config: FaceFormerTrainConfig):
    """(name, audio (S,) 16 kHz, transcript or None, exact phones or None) for every sequence with audio.

    Transcripts and exact phones come from the synthetic corpus's truth files; VOCASET has neither.
    """
    index, _ = corpus(config)
    truth = None if config.vocaset else Path(config.data) / "truth" / "speech"
    everyone = Split(tuple(sorted({s.subject for s in index.sequences})))
    ds = SpeechDataset(index.sequences, everyone, "train", window=None, fps=None)
    for i, seq in enumerate(ds.sequences):
        text, exact = None, None
        if truth is not None and (truth / f"{seq.name}.npz").is_file():
            with np.load(truth / f"{seq.name}.npz") as z:
                text = str(z["text"])
                exact = [Phone(str(p), float(a), float(b)) for p, (a, b) in zip(z["phone_symbols"], z["phone_times"])]
        yield seq.name, ds.audio(i), text, exact


def cache_features(config: FaceFormerTrainConfig, path: str | Path | None = None) -> Path:
    """Compute the phonetic feature cache of the whole corpus (needs pocketsphinx, librosa) and save it."""
    from ..speech.features import build_feature_cache

    path = Path(path) if path is not None else config.feature_path()
    return build_feature_cache(corpus_clips(config)).save(path)


def fit_frames(x: np.ndarray, num_frames: int, name: str) -> np.ndarray:
    """Crop or edge-pad per-frame features (T', ...) to T = num_frames (small audio/motion length differences)."""
    if abs(x.shape[0] - num_frames) > MAX_FEATURE_MISMATCH:
        raise ValueError(f"{name}: features have {x.shape[0]} frames but the motion has {num_frames}; the feature "
                         "cache does not belong to this corpus (rebuild it with --cache-features)")
    if x.shape[0] >= num_frames:
        return x[:num_frames]
    return np.concatenate([x, np.repeat(x[-1:], num_frames - x.shape[0], axis=0)])


def check_cache_audio(cache: FeatureCache, seq) -> None:
    """Refuse a cache made from other audio: its clip length must match the corpus's within 1 ms."""
    if seq.audio_data is None or seq.sample_rate is None:
        return  # audio in separate wav files (FaceFormer layout): only the frame count is checked
    ours, theirs = len(seq.audio_data) / seq.sample_rate, cache.duration(seq.name)
    if abs(ours - theirs) > 1e-3:
        raise ValueError(f"{seq.name}: the corpus audio lasts {ours:.4f} s but the feature cache's {theirs:.4f} s; the "
                         "cache was made from another corpus (rebuild it with --cache-features)")


@dataclass
class SequenceData:
    """Whole sequences of one subset, concatenated on one device.

    motion: (M, V, 3) displacements from each subject's template (metres); offsets/lengths (N,)
    locate sequence n in it; speaker (N,) index into the training subjects (-1 for others).
    mel (M, 80) and phone_ids {source: (M,)} for the phonetic encoder; audio: (S_n,) arrays for wav2vec2.
    """

    names: list[str]
    motion: torch.Tensor
    offsets: np.ndarray
    lengths: np.ndarray
    speaker: np.ndarray
    mel: torch.Tensor | None = None
    phone_ids: dict[str, torch.Tensor] = field(default_factory=dict)
    audio: list[np.ndarray] | None = None
    phones: dict[str, list[list[Phone]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def rows(self, n: int) -> slice:
        return slice(int(self.offsets[n]), int(self.offsets[n] + self.lengths[n]))

    def phonetic(self, rows, source: str) -> torch.Tensor:
        """(..., len(ARPABET) + 80) encoder inputs of the given frame rows, phones from `source`."""
        one_hot = F.one_hot(self.phone_ids[source][rows], len(ARPABET)).float()
        return torch.cat([one_hot, self.mel[rows].float()], dim=-1)

    def audio_window(self, n: int, start: int, length: int) -> np.ndarray:
        """(length * 16000 / 30,) samples of sequence n from frame `start`, zero-padded at the end."""
        per_frame = SAMPLE_RATE / FPS
        a0, size = int(round(start * per_frame)), int(round(length * per_frame))
        out = np.zeros(size, dtype=np.float32)
        chunk = self.audio[n][a0:a0 + size]
        out[: len(chunk)] = chunk
        return out


def load_sequences(config: FaceFormerTrainConfig, subset: str, device, cache: FeatureCache | None = None,
                   max_sequences: int | None = None) -> SequenceData:
    """One subset of the corpus on `device`, with the cache's features (phonetic) or the audio (wav2vec2)."""
    index, split = corpus(config)
    with_audio = config.encoder == "wav2vec2"
    ds = SpeechDataset(index.sequences, split, subset, window=None, fps=FPS, with_audio=with_audio)
    count = len(ds) if max_sequences is None else min(len(ds), max_sequences)
    names, motion, lengths, mels, audio = [], [], [], [], []
    ids: dict[str, list[np.ndarray]] = {}
    phones: dict[str, list[list[Phone]]] = {}
    for i in range(count):
        item = ds[i]
        name, t = item["name"], item["displacement"].shape[0]
        names.append(name)
        motion.append(item["displacement"])
        lengths.append(t)
        if with_audio:
            audio.append(item["audio"].numpy())
        if cache is not None:
            check_cache_audio(cache, ds.sequences[i])
            mels.append(fit_frames(cache.log_mel(name), t, name))
            for source in cache.sources:
                ids.setdefault(source, []).append(fit_frames(cache.phone_ids(name, source), t, name))
                phones.setdefault(source, []).append(cache.phones[source][name])
    lengths = np.array(lengths, dtype=np.int64)
    data = SequenceData(
        names=names, motion=torch.cat(motion).to(device), offsets=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
        lengths=lengths, speaker=ds.subject_index[:count].copy(), audio=audio if with_audio else None, phones=phones)
    if cache is not None:
        data.mel = torch.from_numpy(np.concatenate(mels)).to(device)
        data.phone_ids = {s: torch.from_numpy(np.concatenate(v)).to(device) for s, v in ids.items()}
    return data


def sample_batch(data: SequenceData, config: FaceFormerTrainConfig, rng: np.random.Generator, device) -> dict:
    """Random windows of one length L: inputs (B, L, F) or (B, S), target (B, L, V, 3), speaker (B,), num_frames L."""
    b = config.batch_size
    seq = rng.integers(len(data), size=b)
    lo, hi = int(round(config.min_seconds * FPS)), int(round(config.max_seconds * FPS))
    length = int(min(rng.integers(lo, hi + 1), data.lengths[seq].min()))
    starts = rng.integers(0, data.lengths[seq] - length + 1)
    rows = torch.from_numpy(data.offsets[seq][:, None] + starts[:, None] + np.arange(length)).to(device)  # (B, L)
    if config.encoder == "phonetic":
        sources = [s for s in PHONE_SOURCES if config.phone_mix.get(s, 0) > 0 and s in data.phone_ids]
        p = np.array([config.phone_mix[s] for s in sources], dtype=np.float64)
        picks = rng.choice(len(sources), size=b, p=p / p.sum())
        inputs = torch.stack([data.phonetic(rows[k], sources[j]) for k, j in enumerate(picks)])  # (B, L, F)
        phones_trusted = torch.from_numpy(np.array([sources[j] != "recognized" for j in picks])).to(device)
        inputs[..., len(ARPABET):] = augment_mel(inputs[..., len(ARPABET):], config, rng, phones_trusted)
    else:
        inputs = torch.from_numpy(np.stack([data.audio_window(n, s, length) for n, s in zip(seq, starts)])).to(device)
    return {"inputs": inputs, "target": data.motion[rows], "num_frames": length,
            "speaker": torch.from_numpy(data.speaker[seq]).to(device)}


def augment_mel(mel: torch.Tensor, config: FaceFormerTrainConfig, rng: np.random.Generator,
                phones_trusted: torch.Tensor | None = None) -> torch.Tensor:
    """Log-mel windows (B, L, M) -> augmented copies (module doc); mel_warp = mel_masks = mel_dropout = 0: unchanged.

    Blanked entries take the window's mean level: a flat, featureless spectrum.
    phones_trusted (B,) bool: windows that may lose their whole log-mel (`mel_dropout`).
    """
    b, length, m = mel.shape
    if config.mel_warp > 0:  # new[k] = old[k / alpha]: formants move up by alpha
        alpha = torch.from_numpy(rng.uniform(1 - config.mel_warp, 1 + config.mel_warp, size=b)).to(mel)
        src = (torch.arange(m, device=mel.device, dtype=mel.dtype)[None] / alpha[:, None]).clamp(0, m - 1)  # (B, M)
        lo = src.floor().long()
        hi = (lo + 1).clamp_max(m - 1)
        frac = (src - lo)[:, None]  # (B, 1, M)
        pick = lambda idx: mel.gather(2, idx[:, None].expand(b, length, m))  # noqa: E731
        mel = pick(lo) * (1 - frac) + pick(hi) * frac
    blank = torch.zeros(b, length, m, dtype=torch.bool, device=mel.device)
    if config.mel_masks:
        def spans(size: int, most: int) -> torch.Tensor:  # (B, size) bool: mel_masks random spans of <= most
            width = rng.integers(0, most + 1, size=(b, config.mel_masks))
            start = rng.integers(0, size - width + 1)
            at = np.arange(size)[None, None]
            inside = (at >= start[..., None]) & (at < (start + width)[..., None])  # (B, masks, size)
            return torch.from_numpy(inside.any(1)).to(mel.device)
        blank |= spans(m, 10)[:, None, :] | spans(length, 4)[:, :, None]
    if config.mel_dropout > 0 and phones_trusted is not None:
        drop = torch.from_numpy(rng.random(b) < config.mel_dropout).to(mel.device) & phones_trusted
        blank |= drop[:, None, None]
    if blank.any():
        mel = torch.where(blank, mel.mean(dim=(1, 2), keepdim=True), mel)
    return mel


# ---------------------------------------------------------------------------------------------
# Loss and model


def faceformer_loss(pred: torch.Tensor, target: torch.Tensor, vertex_weight: torch.Tensor, scale: float,
                    lambda_velocity: float = 0.0, lip_pairs: torch.Tensor | None = None,
                    lambda_lip_gap: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Weighted vertex MSE (+ velocity MSE, + lip-gap L1) in model units.

    pred, target (B, T, V, 3); vertex_weight (V,); lip_pairs (P, 2) [upper, lower] lip-seam vertices.
    The lip-gap term is an L1 on upper-minus-lower height per pair: under timing uncertainty MSE
    predicts half-closed lips (the mean of closed and open), L1 the more likely of the two.
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"pred and target must both be (B, T, V, 3), got {tuple(pred.shape)} and {tuple(target.shape)}")
    w = vertex_weight / vertex_weight.mean()
    err = (pred - target) / scale
    rec = (err.pow(2).sum(-1) * w).mean()
    zero = err.new_zeros(())
    vel = (err[:, 1:] - err[:, :-1]).pow(2).sum(-1).mul(w).mean() if lambda_velocity and pred.shape[1] > 1 else zero
    gap = zero
    if lambda_lip_gap and lip_pairs is not None:
        gap = (err[..., lip_pairs[:, 0], 1] - err[..., lip_pairs[:, 1], 1]).abs().mean()  # (B, T, P) -> ()
    total = rec + lambda_velocity * vel + lambda_lip_gap * gap
    return total, {"total": total.item(), "rec": rec.item(), "velocity": vel.item(), "lip_gap": gap.item()}


def new_model(config: FaceFormerTrainConfig, num_vertices: int, num_speakers: int, device) -> FaceFormer:
    if config.model is None:
        encoder = AudioEncoderConfig(kind=config.encoder)
        if config.encoder == "wav2vec2":
            # layerdrop skips layers at random, which DDP reports as unused parameters
            encoder = AudioEncoderConfig(kind="wav2vec2", pretrained=config.wav2vec2, wav2vec2={"layerdrop": 0.0})
        config.model = FaceFormerConfig(num_vertices=num_vertices, num_speakers=num_speakers,
                                        motion_scale=config.motion_scale, encoder=encoder)
    return build_faceformer(config.model, device)


# ---------------------------------------------------------------------------------------------
# The loop


def pick_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _new_run_dir(out: str | Path) -> Path:
    from .dfm import new_run_dir

    return new_run_dir(out, name="faceformer")


def _setup(config: FaceFormerTrainConfig):
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        device = pick_device(config.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls on tensor cores: ~1e-3 relative, ample here
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        # The model is small: past ~4 threads per process, thread hand-offs cost more than they give.
        torch.set_num_threads(config.threads or max(1, min(4, (os.cpu_count() or 1) // world)))
    return distributed, rank, device


def train_faceformer(config: FaceFormerTrainConfig, run_dir: str | Path | None = None, resume: bool = False) -> Path:
    """Train (or resume) a FaceFormer; returns the run folder."""
    distributed, rank, device = _setup(config)
    rng = np.random.default_rng([config.seed, rank])
    torch.manual_seed(config.seed + rank)
    cache = FeatureCache.load(config.feature_path()) if config.encoder == "phonetic" else None
    train = load_sequences(config, "train", device, cache)
    val = load_sequences(config, "val", device, cache, max_sequences=config.val_sequences) if rank == 0 else None
    num_speakers = int(train.speaker.max()) + 1
    run = Path(run_dir) if run_dir is not None else None
    step, best = 0, math.inf
    if resume:
        if run is None or not (run / "state.pt").is_file():
            raise FileNotFoundError(f"nothing to resume in {run}: no state.pt")
        model = FaceFormer.from_pretrained(run / "checkpoint", device=device)
    else:
        model = new_model(config, train.motion.shape[1], num_speakers, device)
    if config.model.num_vertices != train.motion.shape[1]:
        raise ValueError(f"the data has V={train.motion.shape[1]} vertices but the model expects {config.model.num_vertices}")
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    if resume:
        state = torch.load(run / "state.pt", map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        step, best = int(state["step"]), float(state["best"])
    elif rank == 0:
        run = run or _new_run_dir(config.out)
        (run / "train_config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    masks = region_masks(config, train.motion.shape[1])
    lip_w = torch.ones(train.motion.shape[1], device=device)
    if masks is not None:
        lip_w[torch.as_tensor(masks["lips"], device=device)] = config.lip_weight
    rig = load_rig()
    pairs = torch.as_tensor(rig.lip_pairs, device=device) if train.motion.shape[1] == rig.num_vertices else None

    steps_per_epoch = max(1, math.ceil(len(train) / config.batch_size))
    val_every = config.val_every or steps_per_epoch
    total = int(config.epochs * steps_per_epoch)
    started = time.time()
    bar = tqdm(total=total, initial=step, desc="train faceformer", disable=rank != 0, unit="step")
    parts: dict = {}
    while step < total:
        batch = sample_batch(train, config, rng, device)
        x, t, spk, target = batch["inputs"], batch["num_frames"], batch["speaker"], batch["target"]
        if config.lr_schedule == "cosine":
            done = step / total
            if config.max_minutes:
                done = max(done, (time.time() - started) / (60 * config.max_minutes))
            for group in opt.param_groups:
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        prev = target
        if rng.random() < config.self_feed:
            with torch.no_grad():
                prev = model(x, t, spk, target)  # teacher-forced guesses become the previous motion
        loss, parts = faceformer_loss(net(x, t, spk, prev), target, lip_w, config.motion_scale, config.lambda_velocity,
                                      pairs, config.lambda_lip_gap)
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
        if rank == 0 and (step % val_every == 0 or step == total or out_of_time):
            sources = [s for s in ("aligned", "recognized") if s in val.phone_ids] or ["aligned"]
            report = evaluate_model(model, val, masks, sources=sources, rig=rig)
            first = next(iter(report.values()))
            score = first.get("lve_mm2", first.get("mve_mm", parts["total"]))
            line = {"step": step, "epoch": step / steps_per_epoch, "minutes": (time.time() - started) / 60,
                    "loss": parts, "val": report, "val_loss": score}  # val_loss: what best/ and the Hub card rank by
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            bar.set_postfix(loss=f"{parts['total']:.4f}", val=f"{score:.4f}")
            if score < best:
                best = score
                model.save_pretrained(run / "best")
            model.save_pretrained(run / "checkpoint")
            torch.save({"optimizer": opt.state_dict(), "step": step, "best": best}, run / "state.pt.tmp")
            os.replace(run / "state.pt.tmp", run / "state.pt")
        if out_of_time:
            break
    bar.close()
    if distributed:
        torch.distributed.destroy_process_group()
    return run

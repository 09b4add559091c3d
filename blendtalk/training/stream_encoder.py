"""Distil the speech model's phonetic encoder into one that streams (`models.stream_encoder`).

The teacher encodes each clip of the speech corpus whole, as the file path does; the student, a copy
of it, encodes every frame from the window a live session has (`windowed_encode`, a look-ahead drawn
from `lookaheads` at each step) and learns to give the teacher's features. Both read the same inputs
(the recognised phones and the clip-normalised log-mel), so the student learns what the missing
future changes, not the session's running normalisation or its partial phone hypotheses. The speech
model itself, and with it the file path, is untouched.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..constants import ASSETS_DIR
from ..models.stream_encoder import StreamEncoder, normalised_inputs, windowed_encode
from .loop import Loop, new_run_dir, random_state, run_loop, setup_process


@dataclass
class StreamEncoderTrainConfig:
    data: str = "data/synth"  # the synthetic corpus whose speech clips are encoded
    speech: str | None = None  # speech model folder; None: the shipped one
    out: str = "runs"
    lookaheads: list[int] = field(default_factory=lambda: [2, 3, 4])  # frames; one drawn per step
    steps: int = 2000
    clips_per_step: int = 8
    lr: float = 3e-4
    val_every: int = 500
    val_speakers: int = 1  # the corpus's last speakers, held out
    max_minutes: float | None = None
    seed: int = 0
    device: str | None = None

    def __post_init__(self):
        if not self.lookaheads or any(not (isinstance(k, int) and 0 <= k <= 30) for k in self.lookaheads):
            raise ValueError(f"lookaheads must be whole numbers of frames in [0, 30], got {self.lookaheads!r}")
        if self.steps < 1 or self.clips_per_step < 1 or self.val_every < 1 or not self.lr > 0:
            raise ValueError("steps, clips_per_step and val_every must be >= 1 and lr > 0")


def corpus_inputs(data: str | Path) -> dict[str, list[np.ndarray]]:
    """Speaker -> encoder inputs (T, F) of each speech clip of the corpus, phones recognised as the
    file path recognises a user's clip (no transcript)."""
    from ..speech.features import speech_features
    from ..speech.phonetics import PhoneAligner
    from .faceformer import FaceFormerTrainConfig, corpus_clips

    aligner, out = PhoneAligner(), {}
    for name, audio, _, _ in corpus_clips(FaceFormerTrainConfig(data=str(data))):
        out.setdefault(name.split("_")[0], []).append(speech_features(audio, None, aligner).features)
    return out


def distillation_error(student, teacher, clips: list[torch.Tensor], lookahead: int) -> float:
    """RMS of student features from windows of `lookahead` frames minus the teacher's from whole clips,
    over the frames of `clips` ((T, F) raw inputs), relative to the teacher's RMS."""
    with torch.no_grad():
        err = num = 0.0
        for x in clips:
            target = teacher(x[None], len(x))[0]
            err += float(((windowed_encode(student, normalised_inputs(student, x), lookahead) - target) ** 2).sum())
            num += float((target ** 2).sum())
    return math.sqrt(err / num)


def train_stream_encoder(config: StreamEncoderTrainConfig, inputs: dict[str, list[np.ndarray]] | None = None,
                         run_dir: str | Path | None = None) -> Path:
    """Distil; returns the run folder (best/ holds the student with the lowest validation error).
    inputs: speaker -> clips' encoder inputs (default: `corpus_inputs(config.data)`)."""
    from ..models.faceformer import FaceFormer

    _, _, device = setup_process(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    speech = FaceFormer.from_pretrained(config.speech or ASSETS_DIR / "speech", device=device)
    teacher = speech.audio_encoder.eval()
    student = StreamEncoder.copy_of(teacher, config.lookaheads).to(device)  # windowed_encode has no dropout
    inputs = inputs if inputs is not None else corpus_inputs(config.data)
    speakers = sorted(inputs)
    if len(speakers) <= config.val_speakers:
        raise ValueError(f"need more than {config.val_speakers} speakers to hold some out, got {len(speakers)}")
    held = speakers[len(speakers) - config.val_speakers:]
    train = [torch.as_tensor(x, device=device) for s in speakers if s not in held for x in inputs[s]]
    val = [torch.as_tensor(x, device=device) for s in held for x in inputs[s]]
    with torch.no_grad():
        targets = [teacher(x[None], len(x))[0] for x in train]
        normalised = [normalised_inputs(teacher, x) for x in train]

    run = Path(run_dir) if run_dir is not None else new_run_dir(config.out, "stream-encoder")
    run.mkdir(parents=True, exist_ok=True)
    (run / "train_config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
    before = {str(k): distillation_error(teacher, teacher, val, k) for k in config.lookaheads}

    def train_step():
        lookahead = int(rng.choice(config.lookaheads))
        picks = rng.choice(len(train), size=min(config.clips_per_step, len(train)), replace=False)
        err = sum(((windowed_encode(student.encoder, normalised[i], lookahead) - targets[i]) ** 2).sum() for i in picks)
        loss = err / sum(targets[i].numel() for i in picks)
        return loss, {"total": loss.item(), "lookahead": lookahead}

    def validation(parts):
        report = {str(k): distillation_error(student.encoder, teacher, val, k) for k in config.lookaheads}
        return {"relative_rms": report, "teacher_windowed": before}, float(np.mean(list(report.values()))), {}

    opt = torch.optim.Adam(student.parameters(), lr=config.lr)
    loop = Loop(student, opt, run, device, config.steps, max(1, len(train) // config.clips_per_step), config.val_every,
                config.lr, "cosine", config.max_minutes, desc="distil stream encoder")
    run_loop(loop, train_step, validation, lambda: random_state(rng=rng))
    return run

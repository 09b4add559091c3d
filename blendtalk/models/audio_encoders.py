"""Audio front ends for the speech-driven model: audio in, one feature vector per motion frame out.

Every encoder maps its inputs to (B, T, D) at the motion rate (FPS = 30), so the FaceFormer decoder
never sees the audio's own rate:

* `Wav2Vec2Encoder`: raw audio (B, S) at 16 kHz -> transformers `Wav2Vec2Model` (its CNN feature
  extractor frozen, as FaceFormer does) -> ~50 Hz hidden states -> linear projection to D ->
  linear resampling onto exactly T frames.
* `PhoneticEncoder` (the offline default): precomputed frame features (B, T, F), by default
  one-hot phones from pocketsphinx followed by 80 log-mel bands (`blendtalk.speech.features.phonetic_features`) -> a small
  residual temporal-conv + bidirectional GRU stack -> (B, T, D).

`build_audio_encoder` picks one by `AudioEncoderConfig.kind`; it is the only place that may read
pretrained weights from disk or the Hub (constructors do no I/O).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import FPS, SAMPLE_RATE
from ..speech.features import PHONETIC_MELS
from ..speech.phones import ARPABET

ENCODER_KINDS = ("phonetic", "wav2vec2")
WAV2VEC2_MIN_SAMPLES = 400  # samples (25 ms): the receptive field of one wav2vec2 CNN output frame
MAX_DURATION_MISMATCH = 0.25  # s: audio vs motion length; VOCAset clips differ by a few frames, more is a wrong clip
NORM_EPS = 1e-7  # variance floor of the per-clip audio normalisation (Wav2Vec2FeatureExtractor's value)
CMVN_STD_FLOOR = 1e-3  # log-mel std floor: a constant band (silence, padding) maps to 0, not to inf
DEFAULT_WAV2VEC2 = "facebook/wav2vec2-base-960h"  # FaceFormer's checkpoint, for messages only


def _transformers():
    """The `transformers` module, which only the optional wav2vec2 encoder needs (not in requirements.txt)."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "The wav2vec2 audio encoder needs the `transformers` package, which the run-time install leaves out: "
            "`pip install transformers` (or `pip install -r requirements-dev.txt`), or use the default phonetic "
            "encoder (AudioEncoderConfig(kind='phonetic'))"
        ) from err
    return transformers


@dataclass
class AudioEncoderConfig:
    """Which audio front end and its size; nested in FaceFormerConfig and saved with it."""

    kind: str = "phonetic"  # "phonetic" (offline default, DESIGN section 5) or "wav2vec2"
    # --- phonetic ---
    input_dim: int = len(ARPABET) + PHONETIC_MELS  # F: phone one-hots then log-mel, as `phonetic_features` makes
    cmvn_dims: int = PHONETIC_MELS  # trailing F columns (log-mel) standardised per clip: removes loudness and channel
    hidden_dim: int = 128  # width of the conv/GRU stack; even, since the GRU is bidirectional (H/2 per direction)
    conv_layers: int = 2  # residual temporal conv blocks before the GRU; local coarticulation context
    kernel_size: int = 5  # frames (odd, keeps T); two blocks see +-4 frames = +-133 ms at 30 fps
    gru_layers: int = 1  # bidirectional GRU layers: clip-wide context, like wav2vec2's transformer
    dropout: float = 0.1  # inside the phonetic stack
    # --- wav2vec2 ---
    pretrained: str | None = None  # Hub id (e.g. facebook/wav2vec2-base-960h) or local folder; None = random init
    local_files_only: bool = False  # True: never touch the network, only the local Hub cache or a folder
    wav2vec2: dict = field(default_factory=dict)  # Wav2Vec2Config fields; filled with the full config once built
    freeze_feature_extractor: bool = True  # FaceFormer freezes the CNN and fine-tunes the transformer

    def __post_init__(self):
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"audio encoder kind must be one of {ENCODER_KINDS}, got {self.kind!r}")
        if self.kind == "phonetic":
            if self.input_dim < 1 or not 0 <= self.cmvn_dims <= self.input_dim:
                raise ValueError(f"need input_dim >= 1 and 0 <= cmvn_dims <= input_dim, got {self.input_dim}, {self.cmvn_dims}")
            if self.hidden_dim < 2 or self.hidden_dim % 2:
                raise ValueError(f"hidden_dim must be even (bidirectional GRU), got {self.hidden_dim}")
            if self.kernel_size < 1 or self.kernel_size % 2 == 0:
                raise ValueError(f"kernel_size must be odd so that T is kept, got {self.kernel_size}")
            if self.conv_layers < 0 or self.gru_layers < 0:
                raise ValueError(f"conv_layers and gru_layers must be >= 0, got {self.conv_layers}, {self.gru_layers}")
        self.wav2vec2 = dict(self.wav2vec2)


class AudioEncoder(nn.Module):
    """Interface: `forward(inputs, num_frames) -> (B, T, D)` features at FPS, T = num_frames."""

    config: AudioEncoderConfig
    output_dim: int

    def forward(self, inputs: torch.Tensor, num_frames: int) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class PhoneticEncoder(AudioEncoder):
    """Frame features (B, T, F) -> (B, T, D): Linear, residual conv blocks, bidirectional GRU, Linear.

    The features are already at the motion rate, so T must equal `num_frames` exactly.
    """

    def __init__(self, config: AudioEncoderConfig, output_dim: int):
        super().__init__()
        if config.kind != "phonetic":
            raise ValueError(f"PhoneticEncoder needs kind='phonetic', got {config.kind!r}")
        self.config, self.output_dim = config, output_dim
        h = config.hidden_dim
        self.input_proj = nn.Linear(config.input_dim, h)
        self.norms = nn.ModuleList(nn.LayerNorm(h) for _ in range(config.conv_layers))
        self.convs = nn.ModuleList(
            nn.Conv1d(h, h, config.kernel_size, padding=config.kernel_size // 2) for _ in range(config.conv_layers)
        )
        self.gru = (
            nn.GRU(h, h // 2, num_layers=config.gru_layers, batch_first=True, bidirectional=True)
            if config.gru_layers > 0 else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.output_proj = nn.Linear(h, output_dim)

    def forward(self, inputs: torch.Tensor, num_frames: int) -> torch.Tensor:
        """inputs (B, T, F) float frame features, T = num_frames -> (B, T, D)."""
        f = self.config.input_dim
        if inputs.ndim != 3 or inputs.shape[-1] != f or inputs.shape[1] != num_frames:
            raise ValueError(
                f"phonetic features must have shape (B, T={num_frames}, F={f}) (phone one-hots + log-mel "
                f"at {FPS} fps, see phonetic_features), got {tuple(inputs.shape)}"
            )
        x = inputs.float()
        c = self.config.cmvn_dims
        if c > 0:
            mel = x[..., f - c:]  # (B, T, c)
            mean, std = mel.mean(dim=1, keepdim=True), mel.std(dim=1, keepdim=True, unbiased=False)
            x = torch.cat([x[..., : f - c], (mel - mean) / std.clamp_min(CMVN_STD_FLOOR)], dim=-1)
        h = self.input_proj(x)  # (B, T, H)
        for norm, conv in zip(self.norms, self.convs):
            y = conv(norm(h).transpose(1, 2)).transpose(1, 2)  # (B, T, H)
            h = h + self.dropout(F.gelu(y))
        if self.gru is not None:
            h = self.gru(h)[0]  # (B, T, H)
        return self.output_proj(self.dropout(h))  # (B, T, D)


class Wav2Vec2Encoder(AudioEncoder):
    """Raw audio (B, S) at 16 kHz -> wav2vec 2.0 -> (B, T, D) at FPS.

    `model`: an already loaded `transformers.Wav2Vec2Model` (see `load_wav2vec2`); without one the
    model is built, randomly initialised, from `config.wav2vec2` (Wav2Vec2Config fields). The stored
    `self.config` always carries the full Wav2Vec2Config, so a saved FaceFormer rebuilds it offline.
    """

    def __init__(self, config: AudioEncoderConfig, output_dim: int, model: nn.Module | None = None):
        super().__init__()
        if config.kind != "wav2vec2":
            raise ValueError(f"Wav2Vec2Encoder needs kind='wav2vec2', got {config.kind!r}")
        if model is None:
            if config.pretrained is not None and not config.wav2vec2:
                raise ValueError(
                    f"The architecture of pretrained wav2vec2 {config.pretrained!r} is only known after loading it: "
                    "build with build_audio_encoder(config, D) / build_faceformer(config), or load a saved "
                    "FaceFormer with FaceFormer.from_pretrained(folder)"
                )
            transformers = _transformers()
            model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config.from_dict(config.wav2vec2))
        if config.freeze_feature_extractor:
            model.freeze_feature_encoder()
        self.model = model
        self.config = replace(config, wav2vec2=model.config.to_dict())
        self.output_dim = output_dim
        self.output_proj = nn.Linear(model.config.hidden_size, output_dim)  # FaceFormer's audio_feature_map

    def forward(self, inputs: torch.Tensor, num_frames: int) -> torch.Tensor:
        """inputs (B, S) raw audio at 16 kHz (any scale), num_frames T -> (B, T, D)."""
        if inputs.ndim != 2 or inputs.shape[1] < WAV2VEC2_MIN_SAMPLES:
            raise ValueError(
                f"wav2vec2 input must be raw audio (B, S) at {SAMPLE_RATE} Hz with S >= {WAV2VEC2_MIN_SAMPLES} "
                f"samples, got {tuple(inputs.shape)}"
            )
        s = inputs.shape[1]
        if num_frames < 1 or abs(num_frames / FPS - s / SAMPLE_RATE) > MAX_DURATION_MISMATCH:
            raise ValueError(
                f"num_frames={num_frames} at {FPS} fps does not match audio (B, S={s}) = {s / SAMPLE_RATE:.2f} s "
                f"at {SAMPLE_RATE} Hz (expected about {s * FPS / SAMPLE_RATE:.0f} frames)"
            )
        x = inputs.float()
        # Per-clip zero mean, unit variance: what Wav2Vec2FeatureExtractor(do_normalize=True) gives
        # the pretrained checkpoints, so raw waveforms of any gain look alike.
        x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + NORM_EPS)
        hidden = self.model(x).last_hidden_state  # (B, N, C), N ~ 50 per second
        feats = self.output_proj(hidden)  # (B, N, D); projecting first is cheaper and commutes with interpolation
        # align_corners=False maps frame centres onto frame centres (both streams start at t = 0).
        feats = F.interpolate(feats.transpose(1, 2), size=num_frames, mode="linear", align_corners=False)
        return feats.transpose(1, 2)  # (B, T, D)


def load_wav2vec2(pretrained: str, local_files_only: bool = False, **overrides) -> nn.Module:
    """Load a `transformers.Wav2Vec2Model` from a local folder or a Hub id, with a clear offline error.

    `overrides` are Wav2Vec2Config fields (e.g. layerdrop=0.0) applied on top of the checkpoint's.
    """
    Wav2Vec2Model = _transformers().Wav2Vec2Model
    if Path(pretrained).is_dir():
        return Wav2Vec2Model.from_pretrained(pretrained, local_files_only=True, **overrides)
    if Path(pretrained).expanduser().exists() or pretrained.startswith((".", "/", "~")):
        raise FileNotFoundError(f"wav2vec2 folder {pretrained!r} does not exist (a folder with config.json and weights)")
    try:
        return Wav2Vec2Model.from_pretrained(pretrained, local_files_only=local_files_only, **overrides)
    except (OSError, ValueError) as err:
        raise OSError(
            f"Could not load wav2vec2 weights {pretrained!r} ({type(err).__name__}: {str(err).splitlines()[0]}). "
            f"Without network access, download them on a connected machine (`hf download {DEFAULT_WAV2VEC2} "
            "--local-dir wav2vec2`) and pass that local folder as `pretrained`, or use the offline phonetic "
            "encoder (AudioEncoderConfig(kind='phonetic'))."
        ) from err


def build_audio_encoder(config: AudioEncoderConfig, output_dim: int, load_weights: bool = True) -> AudioEncoder:
    """The encoder that `config.kind` names, with output (B, T, output_dim).

    load_weights: for wav2vec2 with `config.pretrained` set, read those weights (local folder or
    Hub). False builds the architecture stored in `config.wav2vec2` with random weights, which is
    what loading a saved FaceFormer needs before its state dict is applied.
    """
    if output_dim < 1:
        raise ValueError(f"output_dim must be positive, got {output_dim}")
    if config.kind == "phonetic":
        return PhoneticEncoder(config, output_dim)
    model = None
    if config.pretrained is not None and load_weights:
        # Only fields the user set on purpose override the checkpoint; a stored full config would
        # also carry values such as architectures/transformers_version that are not overrides.
        overrides = {k: v for k, v in config.wav2vec2.items() if k in _WAV2VEC2_OVERRIDABLE}
        model = load_wav2vec2(config.pretrained, config.local_files_only, **overrides)
    return Wav2Vec2Encoder(config, output_dim, model)


# Training-time knobs that may be changed on a pretrained checkpoint without touching its weights.
_WAV2VEC2_OVERRIDABLE = frozenset({
    "layerdrop", "hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout",
    "final_dropout", "apply_spec_augment", "mask_time_prob", "mask_time_length", "mask_feature_prob",
    "mask_feature_length",
})


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "AudioEncoder", "AudioEncoderConfig", "ENCODER_KINDS", "PhoneticEncoder", "Wav2Vec2Encoder", "build_audio_encoder",
    "count_parameters", "load_wav2vec2",
]

"""The phonetic encoder as a live session runs it, batched, and the copy of it distilled to stream.

The file path encodes a clip with the encoder's bidirectional GRU over every frame. A live session
(`live.speech_stream`) encodes frame t from a window that ends `lookahead` frames later: its convs see
zeros past the window's edge, and the GRU's backward half starts from zero there, as if the clip
ended at t + lookahead. On ARCTIC at the default 4 frames the streamed mouth showed more teeth than
the file path's (mouthLowerDown 0.084 against 0.044 on average over the clip, neutral) and the gap
closes only with 16 frames of look-ahead (docs/live.md).

`windowed_encode` computes exactly what a session computes, for every frame of a clip at once, so
a copy of the encoder can be trained to give from the window alone what the full encoder gives from
the whole clip (`training.stream_encoder`). The copy ships beside the live assets with the
fingerprint of the encoder it was distilled from; sessions use it only with that speech model
(`load_stream_encoder`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..constants import ASSETS_DIR
from . import loading
from .audio_encoders import CMVN_STD_FLOOR, AudioEncoderConfig, build_audio_encoder
from .checkpoint import PretrainedModel

logger = logging.getLogger(__name__)

STREAM_ENCODER_DIR = ASSETS_DIR / "live" / "stream_encoder"


@dataclass
class StreamEncoderConfig:
    """encoder: the speech model's encoder layout; output_dim: its feature size. teacher: `fingerprint`
    of the encoder it was distilled from; lookaheads: the windows (frames) it was distilled for."""

    encoder: AudioEncoderConfig
    output_dim: int
    teacher: str
    lookaheads: list[int] = field(default_factory=lambda: [2, 3, 4])

    def __post_init__(self):
        if isinstance(self.encoder, dict):  # from config.json
            self.encoder = loading.dataclass_from_dict(AudioEncoderConfig, self.encoder, "encoder")
        if self.encoder.kind != "phonetic":
            raise ValueError(f"a stream encoder distils the phonetic encoder, got {self.encoder.kind!r}")


class StreamEncoder(PretrainedModel):
    """A copy of the speech model's phonetic encoder whose weights give, from a live session's window,
    what the original gives from the whole clip. `encoder` is used in its place by `SpeechStream`."""

    MODEL_TYPE = "blendtalk-stream-encoder"
    TITLE = "stream encoder"
    CONFIG = StreamEncoderConfig

    def __init__(self, config: StreamEncoderConfig):
        super().__init__()
        self.config = config
        self.encoder = build_audio_encoder(config.encoder, config.output_dim, load_weights=False)

    @classmethod
    def copy_of(cls, teacher: nn.Module, lookaheads) -> "StreamEncoder":
        """A student that starts as the teacher encoder (the speech model's `audio_encoder`)."""
        model = cls(StreamEncoderConfig(teacher.config, teacher.output_dim, fingerprint(teacher), list(lookaheads)))
        model.encoder.load_state_dict(teacher.state_dict())
        return model

    @classmethod
    def from_pretrained(cls, folder: str | Path = STREAM_ENCODER_DIR, device=None) -> "StreamEncoder":
        return cls._load(folder, cls, device=device).eval()

    def model_card(self) -> str:
        return (f"# blendtalk stream encoder\n\nThe speech model's phonetic encoder (fingerprint `{self.config.teacher[:16]}`), "
                f"distilled so that live mode's windows of {self.config.lookaheads} frames of look-ahead give what the "
                "whole clip gives (`blendtalk.training.stream_encoder`). MIT, trained on blendtalk's synthetic corpus.\n")


def fingerprint(encoder: nn.Module) -> str:
    """sha256 of an encoder's tensors (names and float32 bytes, sorted): which speech model it belongs to."""
    h = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_stream_encoder(speech_model, folder: str | Path = STREAM_ENCODER_DIR) -> nn.Module | None:
    """The distilled encoder for this speech model (on its device), or None: none shipped, or it was
    distilled from another speech model (a session then streams the original, with one log line)."""
    folder = Path(folder)
    if not (folder / loading.CONFIG_NAME).is_file():
        return None
    teacher = speech_model.audio_encoder
    model = StreamEncoder.from_pretrained(folder, device=next(teacher.parameters()).device)
    if model.config.teacher != fingerprint(teacher):
        logger.info("%s was distilled from another speech model; live mode streams this one's own encoder", folder)
        return None
    return model.encoder


def context_frames(encoder: nn.Module) -> int:
    """Frames of conv context on each side of a frame (the window's reach behind it)."""
    c = encoder.config
    return (c.kernel_size // 2) * c.conv_layers


def normalised_inputs(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Encoder inputs (T, F) (phone one-hots, then log-mel) with the mel normalised over the clip, as
    the encoder's own forward does (a session normalises with running statistics instead)."""
    c = encoder.config.cmvn_dims
    mel = x[:, -c:]
    std = mel.std(0, unbiased=False).clamp_min(CMVN_STD_FLOOR)
    return torch.cat([x[:, :-c], (mel - mel.mean(0)) / std], 1)


def windowed_encode(encoder: nn.Module, x: torch.Tensor, lookahead: int) -> torch.Tensor:
    """Normalised inputs x (T, F) -> (T, D): frame t encoded from frames max(0, t - context) to
    min(T - 1, t + lookahead) alone, as `live.speech_stream._EncoderStream.frame` does frame by frame
    (convs zero-padded at the window's ends, the forward GRU carried over the frames, the backward GRU
    from the window's last frame back to t). Differentiable; no dropout."""
    T, c = len(x), context_frames(encoder)
    width = c + lookahead + 1
    pos = torch.arange(T, device=x.device)[:, None] - c + torch.arange(width, device=x.device)  # (T, W)
    valid = ((pos >= 0) & (pos < T))[..., None].to(x.dtype)  # (T, W, 1)
    h = encoder.input_proj(x[pos.clamp(0, T - 1)])  # (T, W, H)
    for norm, conv in zip(encoder.norms, encoder.convs):
        y = conv((norm(h) * valid).transpose(1, 2)).transpose(1, 2)  # outside the window: the conv's zero padding
        h = h + F.gelu(y)
    forward = _direction(encoder.gru, "", h[None, :, c])[0][0]  # (T, H/2): one step a frame
    length = (T - 1 - torch.arange(T, device=x.device)).clamp(max=lookahead) + 1  # (T,) frames t..window end
    back = c + length[:, None] - 1 - torch.arange(lookahead + 1, device=x.device)  # (T, L+1) window end back to t
    seq = h[torch.arange(T, device=x.device)[:, None], back.clamp(min=0)]  # (T, L+1, H), padding past each length
    packed = pack_padded_sequence(seq, length.cpu(), batch_first=True, enforce_sorted=False)
    backward = _direction(encoder.gru, "_reverse", packed)[1][0]  # (T, H/2): the state on reaching t
    return encoder.output_proj(torch.cat([forward, backward], -1))


def _direction(gru: nn.GRU, suffix: str, x):
    """One direction ("" or "_reverse") of a one-layer bidirectional GRU, run forward over x (batch
    first, or packed) with that direction's own parameters (gradients reach them)."""
    one = nn.GRU(gru.input_size, gru.hidden_size, batch_first=True, device="meta")
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    return torch.func.functional_call(one, {n: getattr(gru, n + suffix) for n in names}, (x,))

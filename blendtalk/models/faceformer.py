"""FaceFormer: speech-driven facial motion, d_t = f(audio, d_<t, speaker) (paper eq. 2, Fan et al. 2022).

An audio encoder gives one feature per motion frame (B, T, D). A transformer decoder predicts the
displacement d_t (V, 3) of every frame from the audio and the displacements already produced:

    token_t = style(speaker) + (t == 0 ? 0 : motion_encoder(d_{t-1})) + PPE(t)
    h_t     = decoder layers: biased causal self-attention -> aligned cross-attention -> feed-forward
    d_t     = motion_decoder(h_t)

* Periodic positional encoding (PPE): sinusoids of (t mod p); the period p = 30 frames (1 s at 30 fps) is
  FaceFormer's VOCAset setting.
* Temporal bias (ALiBi-like): the score of key j for query i gets -m_h * floor((i - j) / p), with
  FaceFormer's per-head slopes m_h, and -inf for j > i (causal).
* Alignment bias: motion frame t attends to audio frame t only (`alignment_radius` = 0, FaceFormer's
  mask for equal audio and motion rates), or to frames t-r..t+r.

Departures from the original code, and why:
* Bias and PPE are computed for any position on the fly instead of from tables precomputed to 600
  frames (the original fails beyond 600 frames = 20 s).
* Self-attention sees a sliding window of the last W frames (`window`, default 600 = 20 s), in
  training and at inference alike, so both match and generation keeps a fixed-size key/value cache:
  each new frame costs O(W), memory is O(W), and any length of audio runs. Far frames matter little
  under the temporal bias (the steepest head weights a frame 600 back by e^-5), but the gentlest
  heads (slope 1/256) still look back; W bounds that look-back by design, and clips shorter than W
  are untouched by it.
* `motion_scale`: displacements are divided by it on the way in and multiplied on the way out, so
  the network sees motion of order 1 (mm on a face in metres) whatever the data's unit. With
  metres (1.0, the original), Adam's fixed step size is large next to millimetre targets and the
  motion encoder's inputs are too small to matter early in training. Outputs stay in the data's unit.
* Generation does per frame only what depends on the previous frame. With `alignment_radius` 0 a
  frame's cross-attention output is a function of its own audio frame alone (one visible key gets
  weight 1), so it is computed for all frames at once; the motion fed back to the next frame is
  motion_encoder(motion_decoder(h)), one (D, D) product, and the (V, 3) motion is decoded for all
  frames after the loop. On CUDA one captured graph of the frame step is replayed per frame (the
  speed-up is in docs/experiments.md).
* The start token is the style embedding alone in training and generation alike (the original
  adds the motion encoder's bias in training only). Motion encoder and decoder start at zero, so an
  untrained model outputs zero displacement (the template) and ignores past motion until trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import loading
from .audio_encoders import AudioEncoder, AudioEncoderConfig, build_audio_encoder
from .checkpoint import PretrainedModel, cpu_threads, pick_device

MODEL_TYPE = "blendtalk-faceformer"


@dataclass
class FaceFormerConfig:
    """Architecture of the speech-driven model; saved as config.json next to the weights."""

    num_vertices: int  # V of the topology trained on (4278 on the shipped rig, 5023 on FLAME/VOCAset)
    feature_dim: int = 128  # D; FaceFormer uses 64 on VOCAset, 128 on BIWI; 128 leaves room for the phonetic front end
    num_heads: int = 4  # FaceFormer's 4; the ALiBi slopes are per head (1/4 .. 1/256 for 4 heads)
    num_layers: int = 1  # FaceFormer's single decoder layer; the audio encoder carries most of the capacity
    ff_mult: int = 2  # feed-forward width = ff_mult * D (FaceFormer: 2 * D)
    period: int = 30  # p in frames for PPE and the temporal bias; FaceFormer: 30 for VOCAset (30 fps), 25 for BIWI
    num_speakers: int = 8  # style one-hot size: VOCAset's 8 training subjects, or the synthetic corpus's 8 voices
    window: int = 600  # W frames (20 s at 30 fps) of self-attention look-back; bounds the KV cache, see module doc
    alignment_radius: int = 0  # r: frame t attends audio frames t-r..t+r; 0 = FaceFormer's diagonal alignment
    dropout: float = 0.1  # on tokens, attention weights and residual branches (nn.TransformerDecoderLayer's 0.1)
    motion_scale: float = 1.0  # metres per model unit of motion: 1e-3 lets the network work in mm (module doc)
    encoder: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)  # audio front end

    def __post_init__(self):
        if isinstance(self.encoder, dict):  # from config.json
            self.encoder = loading.dataclass_from_dict(AudioEncoderConfig, self.encoder, "encoder")
        if not isinstance(self.encoder, AudioEncoderConfig):
            raise ValueError(f"encoder must be an AudioEncoderConfig or its fields as a dict, got {self.encoder!r}")
        positive = {"num_vertices": self.num_vertices, "feature_dim": self.feature_dim, "num_heads": self.num_heads,
                    "num_layers": self.num_layers, "ff_mult": self.ff_mult, "period": self.period,
                    "num_speakers": self.num_speakers, "window": self.window}
        if bad := {k: v for k, v in positive.items() if v < 1}:
            raise ValueError(f"FaceFormerConfig fields must be positive, got {bad}")
        if self.feature_dim % self.num_heads:
            raise ValueError(f"feature_dim={self.feature_dim} must be divisible by num_heads={self.num_heads}")
        if not (math.isfinite(self.motion_scale) and self.motion_scale > 0):
            raise ValueError(f"motion_scale must be a positive number of metres per model unit, got {self.motion_scale}")
        if self.alignment_radius < 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"need alignment_radius >= 0 and 0 <= dropout < 1, got {self.alignment_radius}, {self.dropout}")


# ---------------------------------------------------------------------------------------------
# Pure functions: slopes, periodic positional encoding, temporal bias


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """FaceFormer's (ALiBi's) per-head slopes (H,): 2^(-8/n), 2^(-16/n), ... for n a power of two."""
    def powers_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return torch.tensor(powers_of_two(num_heads))
    closest = 2 ** math.floor(math.log2(num_heads))  # ALiBi's rule for other head counts
    extra = alibi_slopes(2 * closest)[0::2][: num_heads - closest]
    return torch.cat([torch.tensor(powers_of_two(closest)), extra])


def periodic_positional_encoding(positions: torch.Tensor, dim: int, period: int) -> torch.Tensor:
    """PPE: positions (L,) int -> (L, dim) sinusoids of (position mod period), interleaved sin/cos."""
    phase = (positions % period).float()[:, None]  # (L, 1)
    freq = torch.exp(torch.arange(0, dim, 2, device=positions.device).float() * (-math.log(10000.0) / dim))
    pe = torch.zeros(positions.shape[0], dim, device=positions.device)
    pe[:, 0::2] = torch.sin(phase * freq)
    pe[:, 1::2] = torch.cos(phase * freq[: dim // 2])
    return pe


def temporal_bias(
    query_pos: torch.Tensor, key_pos: torch.Tensor, slopes: torch.Tensor, period: int, window: int
) -> torch.Tensor:
    """Biased causal mask (H, L, M): -m_h * floor((i - j) / p) for 0 <= i - j < window, else -inf.

    query_pos (L,), key_pos (M,) int frame indices; a negative key position marks an empty cache
    slot and is masked too.
    """
    dist = query_pos[:, None] - key_pos[None, :]  # (L, M)
    allowed = (dist >= 0) & (dist < window) & (key_pos[None, :] >= 0)
    bias = -slopes[:, None, None] * torch.div(dist.clamp_min(0), period, rounding_mode="floor").to(slopes)[None]
    return bias.masked_fill(~allowed[None], float("-inf"))  # (H, L, M)


# ---------------------------------------------------------------------------------------------
# Decoder


class KVCache:
    """Keys and values (B, H, W, dh) of the last W frames of one layer, as a ring buffer.

    Frame t lives in slot t mod W; `positions` (W,) holds each slot's frame (-1 = empty), which is
    all the temporal bias needs, so slots need no reordering. Memory stays fixed at W frames.
    """

    def __init__(self, batch: int, heads: int, head_dim: int, capacity: int, device, dtype):
        self.capacity = capacity
        self.keys = torch.zeros(batch, heads, capacity, head_dim, device=device, dtype=dtype)
        self.values = torch.zeros_like(self.keys)
        self.positions = torch.full((capacity,), -1, dtype=torch.long, device=device)

    def append(self, k: torch.Tensor, v: torch.Tensor, position: torch.Tensor) -> None:
        """Store k, v (B, H, 1, dh) of frame `position` ((1,) long tensor on the cache's device),
        overwriting the frame W steps back. No host-device sync, so the step can be graph-captured."""
        slot = position % self.capacity
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            # Autoregressive training: earlier steps' graphs hold the old buffers, so write a new
            # one (still O(W) per step) instead of modifying it in place.
            self.keys = self.keys.index_copy(2, slot, k)
            self.values = self.values.index_copy(2, slot, v)
        else:
            self.keys.index_copy_(2, slot, k)
            self.values.index_copy_(2, slot, v)
        self.positions.index_copy_(0, slot, position)

    def clear(self) -> None:
        self.positions.fill_(-1)  # stale keys and values are masked by their position


class _SelfAttention(nn.Module):
    def __init__(self, config: FaceFormerConfig):
        super().__init__()
        self.heads, self.dropout = config.num_heads, config.dropout
        self.qkv = nn.Linear(config.feature_dim, 3 * config.feature_dim)
        self.out = nn.Linear(config.feature_dim, config.feature_dim)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, slopes: torch.Tensor, period: int, window: int,
                cache: KVCache | None = None) -> torch.Tensor:
        """x (B, L, D) at frames `positions` (L,) -> (B, L, D); with a cache, L = 1 and keys come from it."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, dh) each
        key_pos = positions
        if cache is not None:
            cache.append(k, v, positions)
            k, v, key_pos = cache.keys, cache.values, cache.positions
        mask = temporal_bias(positions, key_pos, slopes, period, window).to(q.dtype)  # (H, L, M)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None], dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d))  # (B, L, D)


class _AlignedCrossAttention(nn.Module):
    """Cross-modal attention with the alignment bias: frame t sees audio frames t-r..t+r only."""

    def __init__(self, config: FaceFormerConfig):
        super().__init__()
        self.heads, self.radius, self.dropout = config.num_heads, config.alignment_radius, config.dropout
        self.q = nn.Linear(config.feature_dim, config.feature_dim)
        self.kv = nn.Linear(config.feature_dim, 2 * config.feature_dim)
        self.out = nn.Linear(config.feature_dim, config.feature_dim)

    def memory(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Audio features (B, T, D) -> keys, values (B, H, T, dh), computed once per clip, and with
        radius 0 outside training each frame's whole output (B, T, D): a query that may see one
        audio frame gives that frame's value whatever the scores, so nothing is left to compute per step."""
        b, t, d = audio.shape
        k, v = self.kv(audio).view(b, t, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        aligned = None
        if self.radius == 0 and not self.training:  # training drops out the single weight, so it computes
            aligned = self.out(v.transpose(1, 2).reshape(b, t, d))
        return k, v, aligned

    def forward(self, x: torch.Tensor, positions: torch.Tensor, memory) -> torch.Tensor:
        b, n, d = x.shape
        k, v, aligned = memory
        if aligned is not None:
            return aligned[:, positions]  # (B, L, D)
        offsets = torch.arange(-self.radius, self.radius + 1, device=x.device)
        idx = positions[:, None] + offsets[None]  # (L, 2r+1) audio frames each query may see
        valid = (idx >= 0) & (idx < k.shape[2])
        idx = idx.clamp(0, k.shape[2] - 1)
        q = self.q(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, H, L, dh)
        kw, vw = k[:, :, idx], v[:, :, idx]  # (B, H, L, 2r+1, dh)
        scores = (q[..., None, :] * kw).sum(-1) / math.sqrt(q.shape[-1])  # (B, H, L, 2r+1)
        weights = scores.masked_fill(~valid, float("-inf")).softmax(-1)
        weights = F.dropout(weights, self.dropout, self.training)
        y = (weights[..., None] * vw).sum(-2)  # (B, H, L, dh)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class _DecoderLayer(nn.Module):
    """Post-norm layer as nn.TransformerDecoderLayer (FaceFormer's): self-attn, cross-attn, ReLU FF."""

    def __init__(self, config: FaceFormerConfig):
        super().__init__()
        d = config.feature_dim
        self.self_attn = _SelfAttention(config)
        self.cross_attn = _AlignedCrossAttention(config)
        self.ff = nn.Sequential(nn.Linear(d, config.ff_mult * d), nn.ReLU(), nn.Dropout(config.dropout),
                                nn.Linear(config.ff_mult * d, d))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, positions, slopes, period, window, memory, cache=None):
        x = self.norms[0](x + self.drop(self.self_attn(x, positions, slopes, period, window, cache)))
        x = self.norms[1](x + self.drop(self.cross_attn(x, positions, memory)))
        return self.norms[2](x + self.drop(self.ff(x)))


# ---------------------------------------------------------------------------------------------
# The model


class FaceFormer(PretrainedModel):
    """Speech-driven displacements (B, T, V, 3); see the module docstring.

    audio_encoder: an already built encoder (e.g. with pretrained wav2vec2 weights from
    `build_faceformer`); None builds `config.encoder` without reading any weights.
    """

    MODEL_TYPE = MODEL_TYPE
    TITLE = "FaceFormer"
    CONFIG = FaceFormerConfig

    def __init__(self, config: FaceFormerConfig, audio_encoder: AudioEncoder | None = None):
        super().__init__()
        d, v3 = config.feature_dim, 3 * config.num_vertices
        if audio_encoder is None:
            audio_encoder = build_audio_encoder(config.encoder, d, load_weights=False)
        if audio_encoder.output_dim != d:
            raise ValueError(f"audio encoder outputs D={audio_encoder.output_dim} features, the decoder needs feature_dim={d}")
        self.audio_encoder = audio_encoder
        self.config = replace(config, encoder=audio_encoder.config)  # the encoder's config is the complete one
        self.style = nn.Linear(config.num_speakers, d, bias=False)  # speaker one-hot -> D (FaceFormer's obj_vector)
        self.motion_encoder = nn.Linear(v3, d)
        self.layers = nn.ModuleList(_DecoderLayer(config) for _ in range(config.num_layers))
        self.motion_decoder = nn.Linear(d, v3)
        self.token_dropout = nn.Dropout(config.dropout)
        self.register_buffer("slopes", alibi_slopes(config.num_heads), persistent=False)
        for layer in (self.motion_encoder, self.motion_decoder):  # untrained model = template (module doc)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ---- inputs ----
    def style_embedding(self, speaker: torch.Tensor, batch: int) -> torch.Tensor:
        """speaker (B,) int indices or (B, num_speakers) one-hot/mixture weights -> (B, D)."""
        n = self.config.num_speakers
        speaker = torch.as_tensor(speaker, device=self.slopes.device)
        if speaker.ndim == 1 and not speaker.is_floating_point():
            if speaker.shape[0] != batch:
                raise ValueError(f"speaker must have shape (B={batch},), got {tuple(speaker.shape)}")
            if speaker.numel() and (speaker.min() < 0 or speaker.max() >= n):
                raise ValueError(f"speaker indices must lie in [0, {n}), got {speaker.tolist()} (shape {tuple(speaker.shape)})")
            one_hot = F.one_hot(speaker, n).float()
        elif speaker.ndim == 2 and speaker.is_floating_point() and tuple(speaker.shape) == (batch, n):
            one_hot = speaker.float()
        else:
            raise ValueError(f"speaker must be (B={batch},) int indices or (B, {n}) float weights, got "
                             f"{tuple(speaker.shape)} {speaker.dtype}")
        return self.style(one_hot.to(self.style.weight.dtype))  # (B, D)

    def encode_audio(self, audio_inputs: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Audio inputs (B, S) raw or (B, T, F) features -> (B, T, D) at 30 fps, T = num_frames."""
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        return self.audio_encoder(audio_inputs.to(self.slopes.device), num_frames)

    # ---- training ----
    def forward(self, audio_inputs: torch.Tensor, num_frames: int, speaker: torch.Tensor,
                target: torch.Tensor | None = None, teacher_forcing: bool = True) -> torch.Tensor:
        """Predicted displacements (B, T, V, 3) for T = num_frames.

        audio_inputs: (B, S) raw 16 kHz audio (wav2vec2) or (B, T, F) frame features (phonetic).
        speaker: (B,) int style index (or (B, num_speakers) weights). target: (B, T, V, 3) true
        displacements from the template; with teacher forcing frame t sees target[:, :t] (shifted
        right by one, start token = style). teacher_forcing=False runs the autoregressive loop with
        gradients (no target needed). Losses live in blendtalk.training.losses.
        """
        memory = self.encode_audio(audio_inputs, num_frames)  # (B, T, D)
        b = memory.shape[0]
        style = self.style_embedding(speaker, b)  # (B, D)
        if not teacher_forcing:
            return self._autoregress(memory, style, use_cache=True)
        v = self.config.num_vertices
        if target is None or tuple(target.shape) != (b, num_frames, v, 3):
            got = None if target is None else tuple(target.shape)
            raise ValueError(f"target must have shape (B={b}, T={num_frames}, V={v}, 3) with teacher forcing, got {got}")
        target = target.to(memory) / self.config.motion_scale
        prev = self.motion_encoder(target[:, :-1].reshape(b, num_frames - 1, 3 * v))  # (B, T-1, D)
        tokens = torch.cat([torch.zeros_like(style)[:, None], prev], dim=1)  # (B, T, D), start token = style only
        positions = torch.arange(num_frames, device=memory.device)
        h = self._decode(tokens, style, positions, self._memories(memory))
        return self.motion_decoder(h).reshape(b, num_frames, v, 3) * self.config.motion_scale

    # ---- inference ----
    @torch.no_grad()
    def generate(self, audio_inputs: torch.Tensor, num_frames: int, speaker: torch.Tensor,
                 use_cache: bool = True, cuda_graph: bool | None = None) -> torch.Tensor:
        """Autoregressive displacements (B, T, V, 3), any T, in eval mode (dropout off).

        use_cache=True keeps a key/value ring buffer of `window` frames per layer: O(W) per frame.
        use_cache=False recomputes the whole decoder at every step (the reference, O(T^2) per frame).
        cuda_graph: replay one captured decoder step per frame instead of launching its ~60 small
        kernels from Python (None: on when the model is on a CUDA device and use_cache is on). A
        frame of this small decoder is launch-bound, so this is most of its GPU speed.
        """
        was_training = self.training
        self.eval()
        try:
            memory = self.encode_audio(audio_inputs, num_frames)
            style = self.style_embedding(speaker, memory.shape[0])
            if cuda_graph is None:
                cuda_graph = use_cache and memory.is_cuda
            if cuda_graph:
                if not (use_cache and memory.is_cuda):
                    raise ValueError("cuda_graph=True needs the model on a CUDA device and use_cache=True")
                return self._autoregress_graphed(memory, style)
            return self._autoregress(memory, style, use_cache)
        finally:
            self.train(was_training)

    def _autoregress(self, memory: torch.Tensor, style: torch.Tensor, use_cache: bool) -> torch.Tensor:
        b, t_total, _ = memory.shape
        c = self.config
        memories, pe = self._memories(memory), self._phase_table(memory.device)
        prev = torch.zeros_like(style)  # the start token adds nothing to the style
        states: list[torch.Tensor] = []  # decoder states h_t (B, D)
        if use_cache:
            caches, feedback = self._new_caches(memory), self._feedback()
            pos = torch.zeros(1, dtype=torch.long, device=memory.device)
            with cpu_threads(1):  # a frame is ~60 small operations: one thread, 2-10x less CPU on a CPU
                for _ in range(t_total):
                    states.append(self._step(prev, style, pos, pe, memories, caches))
                    prev = F.linear(states[-1], *feedback)
                    pos = pos + 1
        else:  # the reference: the whole decoder again at every step, motion through decoder and encoder
            tokens: list[torch.Tensor] = []
            for t in range(t_total):
                tokens.append(self.token_dropout(prev + style + pe[t % c.period]))
                states.append(self._run_layers(torch.stack(tokens, 1), torch.arange(t + 1, device=memory.device), memories)[:, -1])
                prev = self.motion_encoder(self.motion_decoder(states[-1]))
        d = self.motion_decoder(torch.stack(states, 1))  # (B, T, 3V), all frames in one product
        return d.reshape(b, t_total, c.num_vertices, 3) * c.motion_scale  # (B, T, V, 3)

    def _autoregress_graphed(self, memory: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """As `_autoregress` with the cache, each frame a replay of one CUDA graph of `_step`.

        The step reads and writes only fixed buffers (frame index, previous motion, caches, states),
        so one capture serves every frame; capturing costs about one eager step.
        """
        b, t_total, _ = memory.shape
        c = self.config
        memories, pe, caches = self._memories(memory), self._phase_table(memory.device), self._new_caches(memory)
        feedback = self._feedback()
        pos = torch.zeros(1, dtype=torch.long, device=memory.device)
        prev = torch.zeros_like(style)
        states = memory.new_empty(b, t_total, c.feature_dim)

        def step() -> None:
            h = self._step(prev, style, pos, pe, memories, caches)
            states.index_copy_(1, pos, h[:, None])
            prev.copy_(F.linear(h, *feedback))
            pos.add_(1)

        side = torch.cuda.Stream(memory.device)  # warm-up (library handles, lazy inits) outside the capture
        side.wait_stream(torch.cuda.current_stream(memory.device))
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream(memory.device).wait_stream(side)
        pos.zero_()
        prev.zero_()
        for cache in caches:
            cache.clear()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        for _ in range(t_total):
            graph.replay()
        d = self.motion_decoder(states)  # (B, T, 3V)
        return d.reshape(b, t_total, c.num_vertices, 3) * c.motion_scale  # (B, T, V, 3)

    def _step(self, prev: torch.Tensor, style: torch.Tensor, pos: torch.Tensor, pe: torch.Tensor, memories,
              caches: list[KVCache]) -> torch.Tensor:
        """One cached frame: previous motion embedding prev (B, D), frame index pos (1,) long on the
        device -> decoder state h (B, D). Appends the frame to the caches."""
        c = self.config
        h = self.token_dropout(prev + style + pe[pos % c.period])[:, None]  # (B, 1, D)
        for layer, mem, cache in zip(self.layers, memories, caches):
            h = layer(h, pos, self.slopes, c.period, c.window, mem, cache)
        return h[:, 0]

    def _feedback(self) -> tuple[torch.Tensor, torch.Tensor]:
        """motion_encoder(motion_decoder(h)) as one (D, D) weight and (D,) bias: nothing nonlinear lies
        between a frame's state and the next frame's motion input, so the (V*3)-wide motion need not
        be made inside the loop; it is decoded for all frames at once afterwards."""
        enc, dec = self.motion_encoder, self.motion_decoder
        return enc.weight @ dec.weight, enc.weight @ dec.bias + enc.bias

    def _phase_table(self, device) -> torch.Tensor:
        """PPE of the `period` phases (P, D): frame t uses row t mod P."""
        c = self.config
        return periodic_positional_encoding(torch.arange(c.period, device=device), c.feature_dim, c.period)

    def _new_caches(self, memory: torch.Tensor) -> list[KVCache]:
        """Empty caches for memory (B, T, D): (B, H, min(W, T), dh) per layer, never more."""
        b, t_total, _ = memory.shape
        c = self.config
        return [KVCache(b, c.num_heads, c.feature_dim // c.num_heads, min(c.window, t_total), memory.device, memory.dtype)
                for _ in self.layers]

    # ---- shared decoder path ----
    def _memories(self, memory: torch.Tensor) -> list[tuple]:
        return [layer.cross_attn.memory(memory) for layer in self.layers]

    def _decode(self, motion: torch.Tensor, style: torch.Tensor, positions: torch.Tensor, memories) -> torch.Tensor:
        """Motion embeddings (B, L, D) + style + PPE -> decoder states (B, L, D)."""
        c = self.config
        tokens = motion + style[:, None] + periodic_positional_encoding(positions, c.feature_dim, c.period)
        return self._run_layers(self.token_dropout(tokens), positions, memories)

    def _run_layers(self, h: torch.Tensor, positions: torch.Tensor, memories) -> torch.Tensor:
        for layer, mem in zip(self.layers, memories):
            h = layer(h, positions, self.slopes, self.config.period, self.config.window, mem)
        return h

    # ---- checkpoints: a folder with config.json + model.safetensors ----
    def model_card(self) -> str:
        c = self.config
        return (f"# blendtalk FaceFormer\n\nSpeech-driven displacements for V={c.num_vertices} vertices; "
                f"{c.encoder.kind} audio encoder, D={c.feature_dim}, {c.num_layers} layer(s), period {c.period}, "
                f"window {c.window} frames, {c.num_speakers} speaker styles.\n"
                "Load with `blendtalk.models.faceformer.load_speech_model(folder)`.\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device | None = None) -> FaceFormer:
        """Load a folder written by `save_pretrained`, strictly (every tensor, every shape); no downloads.

        config.json is checked against the stored tensors before any memory is allocated
        (`check_pretrained`); ValueError for a config or weights that do not fit, FileNotFoundError
        for a missing file.
        """
        return cls._load(folder, cls, device=device)


def check_pretrained(folder: str | Path) -> FaceFormerConfig:
    """Check a FaceFormer checkpoint folder without allocating the model: config.json builds a valid
    model whose tensor names and shapes are those stored in model.safetensors. Returns the config."""
    return loading.check_checkpoint(folder, MODEL_TYPE, "FaceFormer", FaceFormerConfig, FaceFormer)


def build_faceformer(config: FaceFormerConfig, device: str | torch.device | None = None) -> FaceFormer:
    """A new FaceFormer whose audio encoder loads pretrained weights when the config names them."""
    model = FaceFormer(config, build_audio_encoder(config.encoder, config.feature_dim, load_weights=True))
    return model.to(device) if device is not None else model


def load_speech_model(source: str | Path, device: str | torch.device | None = None) -> FaceFormer:
    """A speech-model (FaceFormer) checkpoint folder -> the model in eval mode on `device`
    (`pick_device`: cuda when available); no downloads."""
    return FaceFormer.from_pretrained(source, device=pick_device(device)).eval()

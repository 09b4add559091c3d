"""Deformation fusion module (DFM): disentangled speech and expression blendshapes (paper eqs. 3-13).

A speech deformation d_s and an expression deformation d_e (per-vertex displacements from the
neutral face, (..., V, 3)) are each encoded by their own encoder, on the square geometric map
G(d) (3, N, N) or, for the ablation, on the flat (V*3) vector, to K_s + K_e blendshape weights:

    w^s = E_s(G(d_s)) = [w_s^s | w_e^s]        w^e = E_e(G(d_e)) = [w_s^e | w_e^e]

One linear decoder with no bias, whose weight matrix is the blendshapes [B_s | B_e]
(V*3, K_s + K_e), reconstructs both. The cross-domain halves w_e^s, w_s^e absorb each domain's
secondary deformations in training; inference (eq. 13) drops them:
d = B_s w_s^s + B_e (intensity * w_e^e). The paper uses K_s = K_e; K_e may be set apart.

Choices beyond the paper text, each because the linear blendshape model needs it:
* The encoders are positively homogeneous: E(c d) = c E(d) for c > 0, and E(0) = 0. InstanceNorm
  after the first convolution removes each sample's overall amplitude, so a plain CNN gives a 10%
  and a 100% jaw opening the same weights; we encode d / rms(d) and multiply the weights by rms(d).
* The blendshape columns are normalised to unit RMS (`normalize_blendshapes`). Otherwise the L1
  sparsity loss is cheated by scaling B_e up and all expression weights down by the same factor.
  The weights then carry the amplitude: w_k is the RMS displacement (in the input's length unit,
  over all V*3 entries) that blendshape k contributes.
* The cross-domain outputs of both heads start at zero (`cross_init`). The two halves of the
  shared decoder are otherwise interchangeable and a weak L1 never picks which is which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import loading
from .checkpoint import PretrainedModel, pick_device

MODEL_TYPE = "blendtalk-dfm"
AMPLITUDE_FLOOR = 1e-9  # input length unit (metres on the rig): a displacement this small counts as zero
MIN_MAP_SIZE = 2  # pixels: the last block's output side; InstanceNorm needs more than one pixel
# Frames per encoder call on a CPU: 16 frames' first-block activations (8 MB) stay in cache from the
# convolution to the norm, which halved the encoders' time on the 2-core machine (docs/speed.md).
CPU_CHUNK = 16


@dataclass
class DFMConfig:
    """Architecture of the deformation fusion module; saved as config.json next to the weights."""

    num_vertices: int  # V of the topology the module is trained on; the map matrix must have V columns
    num_blendshapes: int = 32  # K_s speech blendshapes (and K_e unless set below); too large a K absorbs leaks
    num_expression_blendshapes: int | None = None  # K_e; None = K_s. A K_e near the expression data's rank keeps B_e from absorbing speech leaks
    map_size: int = 128  # N of the (3, N, N) geometry map; six stride-2 blocks take 128 to 2x2
    channels: tuple[int, ...] = (32, 64, 128, 256, 256, 256)  # per conv block; ~16 MB of weights at V=5023, K=32 (paper: 17.9 MB)
    kernel_size: int = 3  # 3 or 4; with padding 1 and stride 2 both halve an even side exactly
    use_geometric_map: bool = True  # False = the "without geometric mapping" ablation: MLPs on the flat V*3 vector
    mlp_hidden: tuple[int, ...] = (256, 256)  # hidden widths of the flat (ablation) encoders
    normalize_blendshapes: bool = True  # unit-RMS columns, so the L1 sparsity cannot be met by rescaling B
    init_scale: float = 1e-2  # std of the initial raw blendshape entries; when normalised, Adam turns a column by ~lr/init_scale per step
    cross_init: float = 0.0  # initial cross-domain head outputs, relative to own-domain: 0 starts disentangled
    chunk_size: int = 512  # frames per encoder call, so long sequences use bounded memory

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)  # JSON round trip gives lists
        self.mlp_hidden = tuple(int(c) for c in self.mlp_hidden)
        if min(self.num_vertices, self.num_blendshapes, self.k_expression, self.chunk_size) < 1:
            raise ValueError(
                f"num_vertices, num_blendshapes, num_expression_blendshapes and chunk_size must be positive, got "
                f"{self.num_vertices}, {self.num_blendshapes}, {self.num_expression_blendshapes}, {self.chunk_size}"
            )
        if self.use_geometric_map:
            if len(self.channels) == 0:
                raise ValueError("channels must name at least one conv block")
            if self.kernel_size not in (3, 4):
                raise ValueError(f"kernel_size must be 3 or 4, got {self.kernel_size}")
            n = self.map_size
            if n < 2 * MIN_MAP_SIZE or n & (n - 1):
                raise ValueError(f"map_size must be a power of two >= {2 * MIN_MAP_SIZE}, got {n}")

    @property
    def k_speech(self) -> int:
        return self.num_blendshapes

    @property
    def k_expression(self) -> int:
        return self.num_blendshapes if self.num_expression_blendshapes is None else self.num_expression_blendshapes

    @property
    def k_total(self) -> int:
        """Length of a weight vector [speech | expression]."""
        return self.k_speech + self.k_expression

    @property
    def strides(self) -> tuple[int, ...]:
        """Per-block strides: stride 2 except leading stride-1 blocks that keep the last map >= 2x2."""
        max_down = int(math.log2(self.map_size // MIN_MAP_SIZE))
        n_down = min(len(self.channels), max_down)
        return (1,) * (len(self.channels) - n_down) + (2,) * n_down

    @property
    def final_map_size(self) -> int:
        return self.map_size // 2 ** sum(s == 2 for s in self.strides)


def _conv_encoder(config: DFMConfig) -> nn.Sequential:
    """(B, 3, N, N) -> (B, K_s + K_e): blocks of Conv2d -> InstanceNorm2d -> ReLU, then flatten -> Linear."""
    layers: list[nn.Module] = []
    c_in = 3
    for c_out, stride in zip(config.channels, config.strides):
        # No conv bias: InstanceNorm subtracts each channel's mean, which would cancel it.
        # Stride 2 with padding 1 halves an even side for kernel 3 or 4; stride-1 blocks keep it.
        padding = 1
        if stride == 1 and config.kernel_size == 4:  # an even kernel needs asymmetric "same" padding
            layers.append(nn.ZeroPad2d((1, 2, 1, 2)))
            padding = 0
        layers += [
            nn.Conv2d(c_in, c_out, config.kernel_size, stride=stride, padding=padding, bias=False),
            nn.InstanceNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
        c_in = c_out
    side = config.final_map_size
    layers += [nn.Flatten(), nn.Linear(c_in * side * side, config.k_total)]
    return nn.Sequential(*layers)


def _mlp_encoder(config: DFMConfig) -> nn.Sequential:
    """(B, V*3) -> (B, K_s + K_e): Linear -> LayerNorm -> ReLU blocks (LayerNorm plays InstanceNorm's role)."""
    layers: list[nn.Module] = []
    d_in = 3 * config.num_vertices
    for d_out in config.mlp_hidden:
        layers += [nn.Linear(d_in, d_out), nn.LayerNorm(d_out), nn.ReLU(inplace=True)]
        d_in = d_out
    layers.append(nn.Linear(d_in, config.k_total))
    return nn.Sequential(*layers)


def _as_sparse_map(map_matrix: torch.Tensor, config: DFMConfig) -> torch.Tensor:
    expected = (config.map_size**2, config.num_vertices)
    if map_matrix.ndim != 2 or tuple(map_matrix.shape) != expected:
        raise ValueError(
            f"map matrix must have shape (N*N, V) = {expected} for map_size N={config.map_size} and "
            f"V={config.num_vertices} vertices, got {tuple(map_matrix.shape)}"
        )
    m = map_matrix.detach().float()
    m = m.to_sparse_coo() if m.layout != torch.sparse_coo else m  # dense (N*N, V) would be ~300 MB at V=5023
    return m.coalesce()


class DeformationFusionModule(PretrainedModel):
    """Two encoders and a shared linear blendshape decoder; see the module docstring.

    map_matrix: (N*N, V) dense or sparse COO, the geometric map G (pixels x vertices). It is derived
    from the rig, not learned, so it is a non-persistent buffer: pass it again when loading. Not
    needed (may be None) when `config.use_geometric_map` is False.
    """

    MODEL_TYPE = MODEL_TYPE
    TITLE = "DFM"
    CONFIG = DFMConfig

    def __init__(self, config: DFMConfig, map_matrix: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        if config.use_geometric_map:
            if map_matrix is None:
                raise ValueError("use_geometric_map=True needs a (N*N, V) map_matrix (blendtalk.face.geometry.square_map)")
            self.register_buffer("map_matrix", _as_sparse_map(map_matrix, config), persistent=False)
            self.speech_encoder = _conv_encoder(config)
            self.expression_encoder = _conv_encoder(config)
        else:
            self.map_matrix = None
            self.speech_encoder = _mlp_encoder(config)
            self.expression_encoder = _mlp_encoder(config)
        self._init_cross_halves()
        k2, v3 = config.k_total, 3 * config.num_vertices
        # [B_s | B_e] (V*3, K_s + K_e), vertex-major rows (v*3 + xyz); no bias: a neutral face decodes to zero.
        self.blendshape_weight = nn.Parameter(torch.empty(v3, k2).normal_().mul_(config.init_scale))  # = randn * scale; a fill loading skips

    @torch.no_grad()
    def _init_cross_halves(self) -> None:
        # Zero cross-domain outputs break the tie between the decoder's halves the intended way (on
        # a toy, starting from a random head left both domains spread over both halves); they still
        # get gradients and grow where the other domain's secondary deformations need them.
        k = self.config.k_speech
        for encoder, cross in ((self.speech_encoder, slice(k, None)), (self.expression_encoder, slice(0, k))):
            head = encoder[-1]  # the final Linear (..., K_s + K_e)
            head.weight[cross] *= self.config.cross_init
            head.bias[cross] *= self.config.cross_init

    # ---- layout of the weights: [speech (K_s) | expression (K_e)], defined here once ----
    @property
    def num_blendshapes(self) -> tuple[int, int]:
        """(K_s, K_e)."""
        return self.config.k_speech, self.config.k_expression

    def split(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., K_s + K_e) -> (speech half (..., K_s), expression half (..., K_e))."""
        self._check_last(w, self.config.k_total, "blendshape weights")
        k = self.config.k_speech
        return w[..., :k], w[..., k:]

    def join(self, w_speech: torch.Tensor, w_expression: torch.Tensor) -> torch.Tensor:
        """(..., K_s), (..., K_e) -> (..., K_s + K_e), the inverse of `split`; leading dims broadcast."""
        self._check_last(w_speech, self.config.k_speech, "speech weights")
        self._check_last(w_expression, self.config.k_expression, "expression weights")
        # numpy's broadcast_shapes: torch's imports sympy and torch.fx on first use (0.7 s of a CLI run).
        lead = np.broadcast_shapes(tuple(w_speech.shape[:-1]), tuple(w_expression.shape[:-1]))
        return torch.cat([w_speech.expand(*lead, -1), w_expression.expand(*lead, -1)], dim=-1)

    # ---- blendshapes ----
    @property
    def blendshapes(self) -> torch.Tensor:
        """[B_s | B_e] (V*3, K_s + K_e) as used by the decoder (unit-RMS columns when normalised)."""
        b = self.blendshape_weight
        if self.config.normalize_blendshapes:
            b = b / b.pow(2).mean(dim=0, keepdim=True).add(1e-24).sqrt()
        return b

    @property
    def speech_blendshapes(self) -> torch.Tensor:
        """B_s as (K_s, V, 3)."""
        return self.split(self.blendshapes)[0].T.reshape(self.config.k_speech, -1, 3)

    @property
    def expression_blendshapes(self) -> torch.Tensor:
        """B_e as (K_e, V, 3)."""
        return self.split(self.blendshapes)[1].T.reshape(self.config.k_expression, -1, 3)

    # ---- encoders and decoder ----
    def geometry_map(self, d: torch.Tensor) -> torch.Tensor:
        """G: displacements (B, V, 3) -> geometry displacement maps (B, 3, N, N) (eq. 1)."""
        b, v, _ = d.shape
        n = self.config.map_size
        x = d.permute(1, 0, 2).reshape(v, b * 3)  # (V, B*3)
        with torch.autocast(d.device.type, enabled=False):  # sparse matmul has no half-precision kernels
            img = torch.sparse.mm(self.map_matrix, x.float())  # (N*N, B*3)
        return img.reshape(n, n, b, 3).permute(2, 3, 0, 1)  # (B, 3, N, N)

    def encode_speech(self, d: torch.Tensor) -> torch.Tensor:
        """w^s = E_s(G(d)): speech displacements (..., V, 3) -> weights (..., K_s + K_e) = [w_s^s | w_e^s]."""
        return self._encode(self.speech_encoder, d)

    def encode_expression(self, d: torch.Tensor) -> torch.Tensor:
        """w^e = E_e(G(d)): expression displacements (..., V, 3) -> weights (..., K_s + K_e) = [w_s^e | w_e^e]."""
        return self._encode(self.expression_encoder, d)

    def decode(self, w: torch.Tensor) -> torch.Tensor:
        """[B_s | B_e] w: weights (..., K_s + K_e) -> displacements (..., V, 3)."""
        self._check_last(w, self.config.k_total, "blendshape weights")
        return self._decode_with(self.blendshapes, w)

    def decode_speech(self, w_speech: torch.Tensor) -> torch.Tensor:
        """B_s w: speech-half weights (..., K_s) -> displacements (..., V, 3)."""
        self._check_last(w_speech, self.config.k_speech, "speech weights")
        return self._decode_with(self.split(self.blendshapes)[0], w_speech)

    def decode_expression(self, w_expression: torch.Tensor) -> torch.Tensor:
        """B_e w: expression-half weights (..., K_e) -> displacements (..., V, 3)."""
        self._check_last(w_expression, self.config.k_expression, "expression weights")
        return self._decode_with(self.split(self.blendshapes)[1], w_expression)

    def _decode_with(self, shapes: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """shapes (V*3, K) columns, w (..., K) -> displacements (..., V, 3)."""
        out = nn.functional.linear(w, shapes)  # (..., V*3)
        return out.reshape(*w.shape[:-1], self.config.num_vertices, 3)

    def forward(self, d_s: torch.Tensor, d_e: torch.Tensor, d_mixed: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training pass on a speech batch and an expression batch (sizes may differ).

        d_s: (B, V, 3), d_e: (B', V, 3) displacements. Returns the weights w_s (B, K_s + K_e), w_e
        (B', K_s + K_e), their cross-domain halves cross_s = w_e^s (B, K_e) and cross_e = w_s^e
        (B', K_s) and the expression inputs' own half own_e = w_e^e (B', K_e) (split here so that
        losses need not know the layout), the reconstructions
        rec_s (B, V, 3), rec_e (B', V, 3), and the blendshapes [B_s | B_e] (V*3, K_s + K_e).
        d_mixed (B', V, 3), expression frames with speech added, adds mixed_e (B', K_e): their
        expression half, for the invariance prior. Losses are in blendtalk.training.losses.
        """
        w_s = self.encode_speech(d_s)
        w_e = self.encode_expression(d_e)
        cross_e, own_e = self.split(w_e)
        out = {"w_s": w_s, "w_e": w_e, "cross_s": self.split(w_s)[1], "cross_e": cross_e, "own_e": own_e,
               "rec_s": self.decode(w_s), "rec_e": self.decode(w_e), "blendshapes": self.blendshapes}
        if d_mixed is not None:
            out["mixed_e"] = self.split(self.encode_expression(d_mixed))[1]
        return out

    # ---- inference (eq. 13) ----
    def fuse(
        self, d_s: torch.Tensor, d_e: torch.Tensor, intensity: float | torch.Tensor = 1.0
    ) -> torch.Tensor:
        """Fused deformation B_s w_s^s + B_e (intensity * w_e^e); cross-domain halves dropped.

        d_s, d_e: (..., V, 3) with equal (or broadcastable) leading dims, e.g. (T, V, 3) or
        (B, T, V, 3). intensity: a float or a tensor broadcastable to the leading dims (...), e.g.
        a per-frame ramp (T,). Returns (..., V, 3).
        """
        w_speech, _ = self.split(self.encode_speech(d_s))
        _, w_expr = self.split(self.encode_expression(d_e))
        return self.fuse_weights(w_speech, w_expr, intensity)

    def fuse_weights(
        self, w_speech_own: torch.Tensor, w_expr_own: torch.Tensor, intensity: float | torch.Tensor = 1.0
    ) -> torch.Tensor:
        """B_s w_speech_own + B_e (intensity * w_expr_own): (..., K_s), (..., K_e) -> (..., V, 3).

        For callers that already hold weights (mixed emotions, curves edited by hand).
        """
        if isinstance(intensity, torch.Tensor):
            intensity = intensity.to(w_expr_own)[..., None]  # (...,) -> (..., 1)
        return self.decode(self.join(w_speech_own, intensity * w_expr_own))

    # ---- checkpoints: a folder with config.json + model.safetensors ----
    def model_card(self) -> str:
        c = self.config
        return (f"# blendtalk deformation fusion module\n\nV={c.num_vertices} vertices, K_s={c.k_speech} speech and "
                f"K_e={c.k_expression} expression blendshapes, {'geometric map N=' + str(c.map_size) if c.use_geometric_map else 'flat MLP encoders'}.\n"
                "Load with `blendtalk.models.dfm.load_dfm(folder)`.\n")

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, map_matrix: torch.Tensor | None = None, device: str | torch.device | None = None
    ) -> DeformationFusionModule:
        """Load a folder written by `save_pretrained`, strictly (every tensor, every shape).

        config.json is checked against the stored tensors before any memory is allocated
        (`check_pretrained`); ValueError for a config or weights that do not fit, FileNotFoundError
        for a missing file. `load_dfm` builds the map matrix from a rig.
        """
        def build(config: DFMConfig) -> DeformationFusionModule:
            if map_matrix is not None and config.use_geometric_map and map_matrix.shape[-1] != config.num_vertices:
                raise ValueError(
                    f"checkpoint {folder} was trained for V={config.num_vertices} vertices but the map matrix has "
                    f"V={map_matrix.shape[-1]} columns; use the rig/topology the checkpoint was trained on"
                )
            return cls(config, map_matrix)

        return cls._load(folder, build, skeleton=_skeleton, device=device)

    # ---- helpers ----
    def _encode(self, encoder: nn.Module, d: torch.Tensor) -> torch.Tensor:
        v = self.config.num_vertices
        if d.ndim < 2 or tuple(d.shape[-2:]) != (v, 3):
            raise ValueError(f"displacements must have shape (..., V={v}, 3), got {tuple(d.shape)}")
        lead = d.shape[:-2]
        flat = d.reshape(-1, v, 3)  # (B, V, 3)
        if flat.shape[0] == 0:
            return flat.new_zeros(*lead, self.config.k_total)
        size = self.config.chunk_size if d.device.type != "cpu" else min(self.config.chunk_size, CPU_CHUNK)
        chunks = [self._encode_chunk(encoder, c) for c in flat.split(size)]
        return torch.cat(chunks).reshape(*lead, self.config.k_total)  # (..., K_s + K_e)

    def _encode_chunk(self, encoder: nn.Module, d: torch.Tensor) -> torch.Tensor:
        # Positive homogeneity (module docstring): encode the unit-RMS shape, scale by the amplitude.
        # vector_norm has a zero (not NaN) gradient at d = 0, and a neutral frame gives w = 0 exactly.
        amp = torch.linalg.vector_norm(d, dim=(1, 2)) / math.sqrt(d.shape[1] * 3)  # (B,) RMS
        x = d / amp.clamp_min(AMPLITUDE_FLOOR)[:, None, None]  # (B, V, 3)
        x = self.geometry_map(x) if self.config.use_geometric_map else x.reshape(len(x), -1)
        return encoder(x) * amp[:, None]  # (B, K_s + K_e)

    @staticmethod
    def _check_last(t: torch.Tensor, size: int, what: str) -> None:
        if t.ndim == 0 or t.shape[-1] != size:
            raise ValueError(f"{what} must have shape (..., {size}), got {tuple(t.shape)}")


def interpolate_inputs(
    d_s: torch.Tensor, d_e: torch.Tensor, intensity: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """The "interpolation of inputs" baseline (eq. 6): d_s + intensity * d_e, (..., V, 3) each.

    intensity: a float or a tensor broadcastable to the leading dims (...).
    """
    if d_s.shape[-1] != 3 or d_e.shape[-1] != 3 or d_s.shape[-2] != d_e.shape[-2]:
        raise ValueError(f"d_s and d_e must be (..., V, 3) on one topology, got {tuple(d_s.shape)} and {tuple(d_e.shape)}")
    if isinstance(intensity, torch.Tensor):
        intensity = intensity.to(d_e)[..., None, None]  # (...,) -> (..., 1, 1)
    return d_s + intensity * d_e


def _skeleton(config: DFMConfig) -> DeformationFusionModule:
    """The model with an empty sparse map of the right shape: for building on the meta device."""
    if not config.use_geometric_map:
        return DeformationFusionModule(config)
    empty = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long, device="cpu"), torch.zeros(0, device="cpu"),
                                    (config.map_size**2, config.num_vertices), check_invariants=False)
    return DeformationFusionModule(config, empty)


def check_pretrained(folder: str | Path) -> DFMConfig:
    """Check a DFM checkpoint folder without allocating the model: config.json builds a valid DFM
    whose tensor names and shapes are those stored in model.safetensors. Returns the config."""
    return loading.check_checkpoint(folder, MODEL_TYPE, "DFM", DFMConfig, _skeleton)


def load_dfm(source: str | Path, rig=None, device: str | torch.device | None = None) -> DeformationFusionModule:
    """A DFM checkpoint folder -> the model in eval mode on `device` (`pick_device`: cuda when
    available). A checkpoint with a geometric map gets the square map of `rig` (the shipped rig
    when None) at its size; ValueError when the rig's vertex count is not the checkpoint's."""
    from ..face.geometry import load_square_map
    from ..face.rig import load_rig

    device = pick_device(device)
    config = check_pretrained(source)
    smap = load_square_map(rig or load_rig(), config.map_size).matrix(device) if config.use_geometric_map else None
    return DeformationFusionModule.from_pretrained(source, smap, device=device).eval()

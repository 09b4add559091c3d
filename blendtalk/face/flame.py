"""The FLAME head model in torch (shape, expression, pose with linear blend skinning) and FLAME export.

FLAME (Li et al. 2017) is licence-gated: the user brings `generic_model.pkl` (FLAME 2020) or
`flame2023_Open.pkl` (FLAME 2023 Open) and passes its path. Those files are Python 2 pickles in
which some arrays are chumpy objects; `read_flame_model` reads them without chumpy or scipy's
pickled classes, with an unpickler that builds only numpy arrays, builtin containers and inert
stand-ins (a chumpy `Ch` yields the array it stores as 'x', a scipy sparse matrix its arrays)
and refuses every other global, so a pickle cannot run code.

    vertices = LBS(v_template + S beta + E psi + P(pose), joints(beta, psi), pose)

Joints, in kinematic order: global (root), neck, jaw, left eye, right eye. The jaw rotation
(axis-angle, radians) opens the mouth. Units are those of the file (metres for FLAME).

`flame_export` writes per-frame parameters in the layout of GaussianAvatars' `flame_param.npz`
(ShenhanQian/GaussianAvatars, scene/flame_gaussian_model.py), usable as its `--motion_path`.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..safe_pickle import allowed_globals

FLAME_NUM_VERTICES = 5023  # vertices of the FLAME topology (VOCASET, FLAME-registered Florence4D)
FLAME_NUM_FACES = 9976  # triangles of the FLAME topology
FLAME_NUM_SHAPE = 300  # shape (identity) components at the front of `shapedirs`; expression ones follow
FLAME_JOINTS = ("global", "neck", "jaw", "left_eye", "right_eye")
JAW = FLAME_JOINTS.index("jaw")
FLAME_FILES = "a FLAME model pickle: FLAME 2020 generic_model.pkl or FLAME 2023 flame2023_Open.pkl (https://flame.is.tue.mpg.de)"
REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
SMALL_ANGLE2 = 1e-6  # rad^2: below this the Rodrigues coefficients use their Taylor series (no 0/0)
# GaussianAvatars' FlameHead(n_shape=300, n_expr=100) reads these per-frame keys; its motion loader keeps float32 arrays only.
EXPORT_POSE_KEYS = {"rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}
EXPORT_NUM_EXPR = 100


# ---------------------------------------------------------------- reading the pickle without chumpy


class _Inert:
    """Stand-in for a class we must not import: it only stores the pickled state."""

    _pickled_as = "?"

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __reduce__(self):  # never re-pickled: it is converted to an array right after loading
        raise pickle.PicklingError("inert stand-ins are not picklable")


def _inert_class(module: str, name: str) -> type:
    return type(f"Inert_{name}", (_Inert,), {"_pickled_as": f"{module}.{name}"})


def _safe_reconstructor(cls, base, state):
    """copyreg._reconstructor for protocol-0/1 pickles, limited to the inert stand-ins."""
    if not (isinstance(cls, type) and issubclass(cls, _Inert)) or base is not object:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r} from base {base!r}")
    return object.__new__(cls)


_SPARSE_CLASSES = ("csc_matrix", "csr_matrix", "coo_matrix")


@functools.lru_cache(maxsize=None)
def _stub(module: str, name: str) -> type:
    return _inert_class(module, name)


class _FlameUnpickler(pickle.Unpickler):
    """numpy arrays, builtin containers, chumpy `Ch` and scipy sparse matrices (as inert stand-ins)."""

    def find_class(self, module: str, name: str) -> Any:
        # Overriding find_class skips pickle's Python 2 name fix-ups, so accept both spellings.
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return _safe_reconstructor
        if module in ("__builtin__", "builtins") and name == "object":
            return object
        if module == "__builtin__":
            module = "builtins"
        if module == "chumpy" or module.startswith("chumpy."):
            return _stub(module, name)
        if module.startswith("scipy.sparse") and name in _SPARSE_CLASSES:
            return _stub(module, name)
        obj = allowed_globals().get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a FLAME pickle holds only numpy arrays, chumpy arrays "
                f"and scipy sparse matrices; is this {FLAME_FILES}?"
            )
        return obj


def _to_array(value: Any, key: str) -> Any:
    """Replace inert stand-ins by numpy arrays (chumpy 'x', scipy sparse -> dense)."""
    if not isinstance(value, _Inert):
        return value
    state = getattr(value, "state", None)
    kind = value._pickled_as
    if kind.startswith("chumpy"):
        if isinstance(state, dict) and isinstance(state.get("x"), np.ndarray):
            return state["x"]
        raise ValueError(
            f"{key!r} is a chumpy expression ({kind}) rather than a stored array; only plain chumpy arrays "
            "(Ch with data 'x') can be read without chumpy. Expected " + FLAME_FILES
        )
    if isinstance(state, dict):  # scipy sparse: arrays plus '_shape' (or 'shape' in newer scipy)
        import scipy.sparse as sp

        shape = state.get("_shape", state.get("shape"))
        try:
            if "indptr" in state:
                cls = sp.csc_matrix if "csc" in kind else sp.csr_matrix
                return cls((state["data"], state["indices"], state["indptr"]), shape=shape).toarray()
            coords = state.get("coords") or (state["row"], state["col"])
            return sp.coo_matrix((state["data"], coords), shape=shape).toarray()
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{key!r}: cannot rebuild the pickled {kind}: {err}") from None
    raise ValueError(f"{key!r}: unreadable pickled object {kind}")


def read_flame_model(path: str | Path) -> dict[str, np.ndarray]:
    """Read and validate a user-supplied FLAME model pickle; returns plain numpy arrays.

    Keys: v_template (V, 3), f (F, 3) int64, shapedirs (V, 3, S) with S > FLAME_NUM_SHAPE
    (300 shape then expression components), posedirs (9*(J-1), V*3), J_regressor (J, V) dense,
    kintree_table (2, J), weights (V, J), parents (J,) int64 with parents[0] = -1. FLAME has J = 5.
    """
    path = Path(path)
    raw = _unpickle(path, f"FLAME model not found: {path}; pass the path of {FLAME_FILES}",
                    f"expected {FLAME_FILES}")
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a {type(raw).__name__}, not a dict of arrays; expected {FLAME_FILES}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise ValueError(f"{path} lacks the key(s) {missing} of a FLAME model; expected {FLAME_FILES}")
    try:
        arrays = {k: np.asarray(_to_array(raw[k], k)) for k in REQUIRED_KEYS}
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return _validate(arrays, path)


def _validate(a: dict[str, np.ndarray], path: Path | str) -> dict[str, np.ndarray]:
    def bad(key: str, expected: str) -> ValueError:
        return ValueError(f"{path}: {key} must have shape {expected}, got {a[key].shape}; expected {FLAME_FILES}")

    for key, value in a.items():
        if value.dtype == object or not np.issubdtype(value.dtype, np.number):
            raise ValueError(f"{path}: {key} is not a numeric array (dtype {value.dtype})")
    v = a["v_template"]
    if v.ndim != 2 or v.shape[1] != 3 or len(v) < 3:
        raise bad("v_template", "(V, 3)")
    nv = len(v)
    kin = a["kintree_table"]
    if kin.ndim != 2 or kin.shape[0] != 2 or kin.shape[1] < 2:
        raise bad("kintree_table", "(2, J)")
    nj = kin.shape[1]
    f = a["f"]
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer) or f.min() < 0 or f.max() >= nv:
        raise bad("f", f"(F, 3) integer indices below V={nv}")
    sd = a["shapedirs"]
    if sd.ndim != 3 or sd.shape[:2] != (nv, 3) or sd.shape[2] <= FLAME_NUM_SHAPE:
        raise bad("shapedirs", f"({nv}, 3, {FLAME_NUM_SHAPE} shape + expression components)")
    pd, npose = a["posedirs"], 9 * (nj - 1)
    if pd.shape == (nv, 3, npose):  # FLAME's own layout
        pd = pd.reshape(nv * 3, npose).T
    elif pd.shape == (nv * 3, npose):
        pd = pd.T
    elif pd.shape != (npose, nv * 3):
        raise bad("posedirs", f"({nv}, 3, {npose}) or ({npose}, {nv * 3})")
    jr = a["J_regressor"]
    if jr.shape != (nj, nv):
        raise bad("J_regressor", f"({nj}, {nv})")
    w = a["weights"]
    if w.shape != (nv, nj):
        raise bad("weights", f"({nv}, {nj})")
    parents = kin[0].astype(np.int64)
    parents[0] = -1  # the root's parent is stored as 2**32 - 1
    if np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, nj)):
        raise ValueError(f"{path}: kintree_table must list each joint's parent before it, got parents {parents.tolist()}")
    out = {k: np.ascontiguousarray(a[k], dtype=np.float64) for k in ("v_template", "shapedirs", "J_regressor", "weights")}
    out.update(f=f.astype(np.int64), posedirs=np.ascontiguousarray(pd, dtype=np.float64),
               kintree_table=kin.astype(np.int64), parents=parents)
    return out


def _unpickle(path: Path, missing: str, expected: str):
    """A FLAME pickle's object through the restricted unpickler (`_FlameUnpickler`): FileNotFoundError
    `missing` when there is no file, ValueError naming the file for anything unreadable or refused."""
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        with open(path, "rb") as f:
            return _FlameUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        if str(err).startswith("refusing"):
            raise ValueError(f"{path}: {err}") from None
        raise ValueError(f"{path} is not a readable pickle ({err}); {expected}") from None
    except (EOFError, pickle.PickleError, UnicodeDecodeError, AttributeError, TypeError) as err:
        raise ValueError(f"{path} is not a readable pickle ({err}); {expected}") from None


def read_flame_masks(path: str | Path) -> dict[str, np.ndarray]:
    """FLAME's vertex masks (`FLAME_masks.pkl`: region name -> vertex indices, e.g. 'lips', 'face')."""
    path = Path(path)
    raw = _unpickle(path, f"FLAME masks not found: {path} (FLAME_masks.pkl from the FLAME downloads)",
                    "expected FLAME_masks.pkl")
    if not isinstance(raw, dict) or not all(isinstance(v, np.ndarray) and v.ndim == 1 for v in raw.values()):
        raise ValueError(f"{path}: expected a dict of region name -> 1-D vertex index arrays")
    return {str(k): v.astype(np.int64) for k, v in raw.items()}


# ---------------------------------------------------------------- pure geometry


def axis_angle_to_matrix(r: torch.Tensor) -> torch.Tensor:
    """Rodrigues: axis-angle (..., 3) radians -> rotation matrices (..., 3, 3); smooth at 0."""
    if r.shape[-1] != 3:
        raise ValueError(f"axis-angle vectors must have shape (..., 3), got {tuple(r.shape)}")
    x, y, z = r.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*r.shape[:-1], 3, 3)  # skew(r)
    t2 = (r * r).sum(-1)[..., None, None]  # (..., 1, 1) squared angle
    small = t2 < SMALL_ANGLE2
    t2s = torch.where(small, torch.ones_like(t2), t2)  # no 0/0 in the branch torch.where discards
    t = t2s.sqrt()
    a = torch.where(small, 1 - t2 / 6, torch.sin(t) / t)
    b = torch.where(small, 0.5 - t2 / 24, (1 - torch.cos(t)) / t2s)
    eye = torch.eye(3, dtype=r.dtype, device=r.device)
    return eye + a * k + b * (k @ k)


def linear_blend_skinning(
    v_shaped: torch.Tensor,
    pose: torch.Tensor,
    posedirs: torch.Tensor,
    joint_regressor: torch.Tensor,
    parents: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Pose corrective blendshapes + linear blend skinning (SMPL/FLAME style).

    v_shaped: (B, V, 3) shaped, expressed mesh in the rest pose. pose: (B, J, 3) axis-angle per
    joint. posedirs: (9*(J-1), V*3). joint_regressor: (J, V). parents: (J,) with parents[0] = -1
    and parents[j] < j. weights: (V, J) skinning weights. Returns posed vertices (B, V, 3).
    """
    b, v, _ = v_shaped.shape
    nj = pose.shape[1]
    joints = torch.einsum("jv,bvc->bjc", joint_regressor, v_shaped)  # (B, J, 3) rest joints
    rot = axis_angle_to_matrix(pose)  # (B, J, 3, 3)
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    pose_feature = (rot[:, 1:] - eye).reshape(b, -1)  # (B, 9*(J-1)); the root rotation adds no corrective
    v_posed = v_shaped + (pose_feature @ posedirs).reshape(b, v, 3)
    # Chain the joints' rigid transforms (rotation about each rest joint) from the root down.
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    rots, trans = [rot[:, 0]], [rel[:, 0]]
    for j in range(1, nj):
        p = int(parents[j])
        rots.append(rots[p] @ rot[:, j])
        trans.append(trans[p] + (rots[p] @ rel[:, j, :, None])[..., 0])
    world_r = torch.stack(rots, 1)  # (B, J, 3, 3)
    world_t = torch.stack(trans, 1) - (world_r @ joints[..., None])[..., 0]  # (B, J, 3): rest joints to the origin first
    blend_r = torch.einsum("vj,bjxy->bvxy", weights, world_r)  # (B, V, 3, 3)
    blend_t = torch.einsum("vj,bjx->bvx", weights, world_t)  # (B, V, 3)
    return (blend_r @ v_posed[..., None])[..., 0] + blend_t


# ---------------------------------------------------------------- the layer


class FlameModel(nn.Module):
    """FLAME as a torch module; build it with `load_flame(path)` (or `FlameModel(arrays)` from
    `read_flame_model`). All buffers, no parameters; batched over any leading dims.

    num_shape: identity components used (<= 300); num_expression: expression components used
    (FLAME files hold 100; 50 is common). V = num_vertices, F = faces.
    """

    def __init__(self, arrays: dict[str, np.ndarray], num_shape: int = FLAME_NUM_SHAPE, num_expression: int = 100):
        super().__init__()
        sd = arrays["shapedirs"]
        available = sd.shape[2] - FLAME_NUM_SHAPE
        if not 0 <= num_shape <= FLAME_NUM_SHAPE:
            raise ValueError(f"num_shape must be in [0, {FLAME_NUM_SHAPE}], got {num_shape}")
        if not 1 <= num_expression <= available:
            raise ValueError(f"num_expression must be in [1, {available}] for this FLAME file, got {num_expression}")
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        self.register_buffer("v_template", f32(arrays["v_template"]))  # (V, 3)
        self.register_buffer("faces", torch.as_tensor(arrays["f"], dtype=torch.long))  # (F, 3)
        self.register_buffer("shapedirs", f32(sd[:, :, :num_shape]))  # (V, 3, n_shape)
        self.register_buffer("exprdirs", f32(sd[:, :, FLAME_NUM_SHAPE : FLAME_NUM_SHAPE + num_expression]))  # (V, 3, n_expr)
        self.register_buffer("posedirs", f32(arrays["posedirs"]))  # (9*(J-1), V*3)
        self.register_buffer("joint_regressor", f32(arrays["J_regressor"]))  # (J, V)
        self.register_buffer("lbs_weights", f32(arrays["weights"]))  # (V, J)
        self.register_buffer("parents", torch.as_tensor(arrays["parents"], dtype=torch.long))  # (J,)
        # Sizes, fixed by the file (moving the buffers to another device never changes them).
        self.num_vertices, self.num_shape = self.v_template.shape[0], num_shape
        self.num_expression, self.num_joints = num_expression, self.parents.shape[0]

    def forward(
        self,
        expr: torch.Tensor | None = None,
        jaw_pose: torch.Tensor | None = None,
        shape: torch.Tensor | None = None,
        global_pose: torch.Tensor | None = None,
        neck_pose: torch.Tensor | None = None,
        eyes_pose: torch.Tensor | None = None,
        translation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """FLAME vertices (..., V, 3). Every argument is optional (zeros), with leading dims (...)
        that broadcast: expr (..., n_expr), jaw_pose, global_pose, neck_pose, translation (..., 3),
        shape (..., n_shape), eyes_pose (..., 6) = [left eye, right eye] axis-angle, radians."""
        sizes = {"expr": self.num_expression, "jaw_pose": 3, "shape": self.num_shape, "global_pose": 3,
                 "neck_pose": 3, "eyes_pose": 6, "translation": 3}
        given = {k: t for k, t in zip(sizes, (expr, jaw_pose, shape, global_pose, neck_pose, eyes_pose, translation))
                 if t is not None}
        for key, t in given.items():
            if t.ndim == 0 or t.shape[-1] != sizes[key]:
                raise ValueError(f"{key} must have shape (..., {sizes[key]}), got {tuple(t.shape)}")
        # numpy's broadcast_shapes: torch's imports sympy and torch.fx on first use (0.7 s).
        lead = np.broadcast_shapes(*(tuple(t.shape[:-1]) for t in given.values())) if given else ()
        ref = self.v_template
        n = int(np.prod(lead)) if lead else 1

        def arg(key: str) -> torch.Tensor:  # (B, size), zeros when not given
            t = given.get(key)
            if t is None:
                return ref.new_zeros(n, sizes[key])
            return t.to(ref).expand(*lead, sizes[key]).reshape(n, sizes[key])

        v_shaped = self.v_template + torch.einsum("vce,be->bvc", self.exprdirs, arg("expr"))  # (B, V, 3)
        if "shape" in given:
            v_shaped = v_shaped + torch.einsum("vcs,bs->bvc", self.shapedirs, arg("shape"))
        pose = torch.cat([arg("global_pose"), arg("neck_pose"), arg("jaw_pose"), arg("eyes_pose")], -1)  # (B, 15)
        verts = linear_blend_skinning(v_shaped, pose.reshape(n, -1, 3), self.posedirs, self.joint_regressor,
                                      self.parents, self.lbs_weights)
        verts = verts + arg("translation")[:, None]
        return verts.reshape(*lead, self.num_vertices, 3)

    def displacement(self, expr: torch.Tensor | None = None, jaw_pose: torch.Tensor | None = None) -> torch.Tensor:
        """Per-vertex displacement from the neutral template: (..., V, 3), for expr (..., n_expr), jaw_pose (..., 3)."""
        return self(expr=expr, jaw_pose=jaw_pose) - self.v_template


def load_flame(
    path: str | Path, num_expression: int = 100, num_shape: int = FLAME_NUM_SHAPE, device: str | torch.device | None = None
) -> FlameModel:
    """Load a user-supplied FLAME model file (see `read_flame_model`) as a `FlameModel`."""
    model = FlameModel(read_flame_model(path), num_shape=num_shape, num_expression=num_expression)
    return model.to(device) if device is not None else model


# ---------------------------------------------------------------- export


def flame_export(
    params: dict[str, Any],
    path: str | Path,
    num_shape: int = FLAME_NUM_SHAPE,
    num_expr: int = EXPORT_NUM_EXPR,
    num_vertices: int = FLAME_NUM_VERTICES,
) -> Path:
    """Write per-frame FLAME parameters as a GaussianAvatars-style `flame_param.npz`.

    params: 'expr' (T, n) with n <= num_expr (zero-padded to num_expr, GaussianAvatars' 100) and
    optionally 'jaw_pose', 'rotation', 'neck_pose', 'translation' (T, 3), 'eyes_pose' (T, 6),
    'shape' (n_shape,). Missing keys are the rest pose: zeros (neutral head, identity 0). Writes
    shape (num_shape,), expr (T, num_expr), rotation / neck_pose / jaw_pose / translation (T, 3),
    eyes_pose (T, 6) and static_offset (1, num_vertices, 3), all float32 (GaussianAvatars' motion
    loader skips other dtypes). Use it as GaussianAvatars' `--motion_path`.
    """
    if "expr" not in params:
        raise ValueError(f"params need 'expr' (T, n); got keys {sorted(params)}")
    expr = np.asarray(params["expr"], dtype=np.float32)
    if expr.ndim != 2 or expr.shape[0] == 0 or expr.shape[1] > num_expr:
        raise ValueError(f"expr must have shape (T, n) with T > 0 and n <= {num_expr}, got {expr.shape}")
    t = len(expr)
    out = {"expr": np.pad(expr, ((0, 0), (0, num_expr - expr.shape[1])))}
    for key, size in EXPORT_POSE_KEYS.items():
        value = np.asarray(params.get(key, np.zeros((t, size))), dtype=np.float32)
        if value.shape != (t, size):
            raise ValueError(f"{key} must have shape (T, {size}) = ({t}, {size}), got {value.shape}")
        out[key] = value
    shape = np.asarray(params.get("shape", np.zeros(num_shape)), dtype=np.float32).reshape(-1)
    if len(shape) > num_shape:
        raise ValueError(f"shape has {len(shape)} components, more than num_shape={num_shape}")
    out["shape"] = np.pad(shape, (0, num_shape - len(shape)))
    out["static_offset"] = np.zeros((1, num_vertices, 3), dtype=np.float32)
    for key, value in out.items():
        if not np.isfinite(value).all():
            raise ValueError(f"{key} contains NaN or infinite values")
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"FLAME parameters are written as .npz, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return path

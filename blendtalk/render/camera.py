"""The render camera, fixed from the *template* so the frames of an animation do not jitter: it
looks down -z at the face (+z is out of the face), centred on the template's bounding box, which it
frames with a margin, from a slight elevation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def rotation(yaw_deg: float, pitch_deg: float) -> torch.Tensor:
    """World -> camera rotation (3, 3) float64 for a camera orbited by yaw, then raised by pitch."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = torch.tensor([[math.cos(y), 0, -math.sin(y)], [0, 1, 0], [math.sin(y), 0, math.cos(y)]])
    rx = torch.tensor([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return (rx @ ry).double()


@dataclass(frozen=True)
class Camera:
    """centre (3,) and rotation (3, 3) float32 on the render device; distance from the centre and
    focal (half-frames per unit of x / depth, or per unit when orthographic) in the template's units;
    depth_near/depth_far: the range the depth code spans (the template's plus room to move)."""

    centre: torch.Tensor
    rotation: torch.Tensor
    distance: float
    focal: float
    depth_near: float
    depth_far: float
    perspective: bool

    @classmethod
    def frame(cls, face: torch.Tensor, config, device) -> "Camera":
        """The camera of a `RenderConfig` that just fits the face template (V, 3) float64, centred on its box."""
        centre = (face.amin(0) + face.amax(0)) / 2
        rot = rotation(config.yaw_deg, config.pitch_deg)
        local = (face - centre) @ rot.T  # (V, 3), +z toward the camera
        reach = local[:, :2].abs().amax(1)  # (V,)
        fill = 1 - 2 * config.margin
        extent = float((face.amax(0) - face.amin(0)).norm())
        if config.fov_deg > 0:
            tan = math.tan(math.radians(config.fov_deg) / 2)
            distance = float((reach / (tan * fill) + local[:, 2]).max())
            focal = 1 / tan
        else:
            distance = float(local[:, 2].max()) + extent
            focal = fill / float(reach.max())
        depth = distance - local[:, 2]
        # Depth-code range: the template's plus room for the animation to move.
        near = max(float(depth.min()) - 0.5 * extent, 0.05 * float(depth.min()))
        far = float(depth.max()) + 0.5 * extent
        return cls(centre.float().to(device), rot.float().to(device), distance, focal, near, far, config.fov_deg > 0)

    def project(self, verts: torch.Tensor, n: int):
        """World (T, V, 3) -> screen x, y in px of an n-px frame, depth, depth code: each (T, V)."""
        cam = (verts - self.centre) @ self.rotation.T  # (T, V, 3)
        depth = self.distance - cam[..., 2]
        half = 0.5 * n
        if self.perspective:
            inv = 1 / depth.clamp(min=1e-6 * self.distance)
            lo, hi = 1 / self.depth_far, 1 / self.depth_near
            q = (hi - inv) / (hi - lo)  # 1/depth is affine in screen space
            scale = half * self.focal * inv
        else:
            q = (depth - self.depth_near) / (self.depth_far - self.depth_near)
            scale = half * self.focal
        return half + cam[..., 0] * scale, half - cam[..., 1] * scale, depth, q

    def surface_depth(self, code: torch.Tensor) -> torch.Tensor:
        """Depth code (any shape) -> depth, the inverse of `project`'s code."""
        if self.perspective:
            lo, hi = 1 / self.depth_far, 1 / self.depth_near
            return 1 / (hi - code * (hi - lo)).clamp(min=1e-12)
        return self.depth_near + code * (self.depth_far - self.depth_near)

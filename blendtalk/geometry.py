"""Pure geometry on triangle meshes: vertex normals, the uniform Laplacian, the square geometric map.

All functions are batched over leading dimensions `...` and work on torch tensors.
"""

from __future__ import annotations

import torch


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals.

    vertices: (..., V, 3) float. triangles: (F, 3) long. Returns (..., V, 3).
    """
    if vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (..., V, 3), got {tuple(vertices.shape)}")
    tri = triangles.to(vertices.device).long()
    a, b, c = (vertices[..., tri[:, k], :] for k in range(3))  # (..., F, 3) each
    face_n = torch.cross(b - a, c - a, dim=-1)  # (..., F, 3), length = 2 * area
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals.index_add_(-2, tri[:, k], face_n)
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)

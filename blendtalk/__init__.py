"""blendtalk: emotional 3D talking faces from speech, with disentangled speech and expression blendshapes."""

from .rig import FaceRig, load_rig

__all__ = ["FaceRig", "load_rig"]
__version__ = "0.1.0"

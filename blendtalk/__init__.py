"""blendtalk: emotional 3D talking faces from speech, with disentangled speech and expression blendshapes.

    from blendtalk import Pipeline
    pipe = Pipeline.from_pretrained()
    anim = pipe.animate("speech.wav", emotion="happy", intensity=0.8)
    pipe.save_video(anim, "out.mp4")
"""

from .animation import Animation
from .emotions import EMOTIONS
from .pipeline import Expression, Pipeline
from .rig import FaceRig, load_rig

__all__ = ["Animation", "EMOTIONS", "Expression", "FaceRig", "Pipeline", "load_rig"]
__version__ = "0.1.0"

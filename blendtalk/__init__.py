"""blendtalk: emotional 3D talking faces from speech, with disentangled speech and expression blendshapes.

    from blendtalk import Pipeline
    pipe = Pipeline.from_pretrained()
    anim = pipe.animate("speech.wav", emotion="happy")  # intensity 1.0: the apex
    pipe.save_video(anim, "out.mp4")
"""

import importlib

# The public names load their modules on first use, so that `import blendtalk.speech.phonetics` (as the
# phone-recognition worker processes do) does not pull in torch.
_EXPORTS = {"Animation": ".animation", "EMOTIONS": ".expression.emotions", "Expression": ".pipeline", "Pipeline": ".pipeline",
            "FaceRig": ".face.rig", "load_rig": ".face.rig"}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'blendtalk' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

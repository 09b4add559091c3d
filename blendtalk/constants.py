"""Constants shared across blendtalk, with units, defined once."""

from pathlib import Path

SAMPLE_RATE = 16_000  # Hz, audio everywhere inside blendtalk
FPS = 30  # motion frames per second (VOCAset's rate)
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
FACE_RIG_PATH = ASSETS_DIR / "face_rig.npz"
CACHE_ENV = "BLENDTALK_CACHE"  # environment variable overriding the cache folder
DEFAULT_CACHE_DIR = Path("~/.cache/blendtalk")

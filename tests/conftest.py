import sys
from pathlib import Path

# Tests import the build tools (tools/) as well as the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

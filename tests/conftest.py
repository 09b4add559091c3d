import sys
from pathlib import Path

# Tests import the build tools (tools/) as well as the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _grad_mode_restored(request):
    """Global torch state is not a test's to change: a test that leaves grad mode off fails itself,
    instead of a later test failing far from the cause."""
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail(f"{request.node.nodeid} left torch grad mode disabled")

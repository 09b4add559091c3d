"""The globals a data pickle may name: the allow-list that blendtalk's restricted unpicklers
(VOCASET files in blendtalk.data.vocaset, FLAME models in blendtalk.face.flame) resolve against."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.lru_cache(maxsize=1)
def allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object: numpy-array reconstruction and builtin containers, nothing that runs code."""
    import collections
    import _codecs
    import builtins

    from numpy._core import multiarray, numeric

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x and 2.x names
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = numeric._frombuffer
    for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes",
                 "bytearray", "bool"):
        allowed[("builtins", name)] = getattr(builtins, name)
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("collections", "defaultdict")] = collections.defaultdict
    allowed[("_codecs", "encode")] = _codecs.encode  # bytes in protocol-2 pickles written by Python 3
    return allowed

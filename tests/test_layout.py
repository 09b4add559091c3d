"""The package layout by pipeline stage, read from the source's imports (nothing is imported):
no import cycles, and no stage imports a later one. Function-level imports count as much as
module-level ones: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "blendtalk"

# Lowest first. A module may import its own layer and the layers before it, never a later one.
LAYERS = (
    ("blendtalk.constants", "blendtalk.animation", "blendtalk.safe_pickle", "blendtalk.worker_process"),  # units, the result
    # type, safe pickles, how worker processes start
    ("blendtalk.face",),  # rig, geometry, rig mappings, FLAME, dressing
    ("blendtalk.speech",),  # audio, phones, TTS, alignment, features, visemes
    ("blendtalk.expression",),  # emotions, head and eye motion
    ("blendtalk.data",),  # corpus formats, the synthetic corpora
    ("blendtalk.models",),  # DFM, speech model, audio encoders, checkpoint loading
    ("blendtalk.render",),  # rasterizer, video, Plotly views, exports
    ("blendtalk.evaluation",),  # metrics, lip sync, fusion scores, legibility, study, benchmark clips
    ("blendtalk.training",),  # loops, losses (validation reads evaluation's metrics)
    ("blendtalk.live",),  # live mode: streaming session, frame format, WebSocket server, browser page
    ("blendtalk.clients",),  # code that runs inside other tools (the Blender add-on): the standard library only
    ("blendtalk.request", "blendtalk.hub", "blendtalk.model_card", "blendtalk.publish", "blendtalk.pipeline", "blendtalk.cli",
     "blendtalk.live.cli", "blendtalk.serving", "blendtalk.path_mask", "blendtalk.interrupt",
     "blendtalk.__main__", "blendtalk"),  # the product's entry points
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The blendtalk modules `path` imports, wherever in the file the import stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from pkg import module` imports the module; `from module import name` the module itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # an attribute path: keep its module
                target = target.rpartition(".")[0]
            if target.startswith("blendtalk") and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) for name, path in mods.items()}


def layer(module: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + ".") and prefix != "blendtalk":
                best = i
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in tests/test_layout.py")
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_no_layer_imports_a_later_one():
    bad = sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                 for a, targets in graph().items() for b in targets if layer(b) > layer(a))
    assert bad == []


def test_the_checker_sees_what_it_should():
    """The test above could pass on a checker that finds nothing: it must find known edges."""
    edges = graph()
    assert "blendtalk.face.rig" in edges["blendtalk.pipeline"]  # module level, relative
    assert "blendtalk.render.renderer" in edges["blendtalk.pipeline"]  # inside a method
    assert "blendtalk.models.dfm" in edges["blendtalk.hub"]  # `from .models import dfm`
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("blendtalk.training.losses") > layer("blendtalk.face.rig")

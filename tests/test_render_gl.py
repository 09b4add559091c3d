"""The OpenGL back end (render/gl.py) against the torch rasterizer it stands in for, and the fallback."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import blendtalk.render.gl as gl
import blendtalk.render.gl_worker as gl_worker
import blendtalk.render.shading as shading
from blendtalk.pipeline import Pipeline
from blendtalk.render.renderer import Renderer, RenderConfig
from blendtalk.render.wrinkles import wrinkle_glsl

SIZE = 256  # px: large enough that the mouth, eyes and brows span many pixels
TOLERANCE = 2.0  # mean absolute difference in 8-bit levels allowed between the back ends (issue #27)

needs_gl = pytest.mark.skipif(not gl.gl_status()[0], reason=f"OpenGL unavailable: {gl.gl_status()[1]}")


@pytest.fixture(scope="module")
def animated(rig):
    """Dressed frames that move what the dressing follows: (T, V, 3) vertices, (T, 2) gaze, (T, 3) head."""
    named = [{}, {"jawOpen": 1.0}, {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0, "jawOpen": 0.3},
             {"browInnerUp": 1.0, "eyeWideLeft": 1.0, "eyeWideRight": 1.0},
             {"browDownLeft": 1.0, "browDownRight": 1.0, "noseSneerLeft": 1.0, "noseSneerRight": 1.0},
             {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0, "tongueOut": 1.0}]
    verts = rig(np.stack([rig.weights(p) for p in named]))
    gaze = np.array([[0, 0], [0.2, 0], [-0.2, 0.1], [0, -0.15], [0.1, 0.1], [0, 0]], np.float32)
    head = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.2, 0], [0, -0.15, 0.05], [-0.08, 0.1, -0.05], [0, 0, 0.1]], np.float32)
    return verts, gaze, head


@pytest.fixture(scope="module")
def both(rig, animated):
    """Frames of the same animation from the OpenGL and the torch back end: (T, H, W, 3) uint8 each."""
    a = Renderer.for_rig(rig, RenderConfig(size=SIZE, backend="gl"))
    b = Renderer.for_rig(rig, RenderConfig(size=SIZE, backend="torch"))
    assert (a.backend, b.backend) == ("gl", "torch")
    return a(*animated), b(*animated), b


def region_box(renderer: Renderer, rig, name: str) -> tuple[slice, slice]:
    """Image rows and columns around the template's `name` region as the renderer frames it."""
    import torch

    x, y, _, _ = renderer.camera.project(torch.as_tensor(rig.vertices, dtype=torch.float32)[None], renderer.config.size)
    sel = np.asarray(rig.masks[name])
    xs, ys = x[0].numpy()[sel], y[0].numpy()[sel]
    pad = 4  # px: the head turns a little in the test frames
    return slice(max(int(ys.min()) - pad, 0), int(ys.max()) + pad), slice(max(int(xs.min()) - pad, 0), int(xs.max()) + pad)


@needs_gl
def test_gl_frames_match_torch_frames(both):
    a, b, _ = both
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.mean() < TOLERANCE / 10  # in practice a few edge pixels differ
    assert (diff.max(-1) > 8).mean() < 0.001
    assert (a != a[:, :1, :1]).any(-1).mean() > 0.2  # the face is drawn, not just the background


@needs_gl
@pytest.mark.parametrize("region", ["lips", "eyes", "upper_face"])  # mouth with teeth and tongue; eyes with gaze; brows
def test_gl_matches_torch_in_the_regions_that_carry_expression(both, rig, region):
    a, b, torch_renderer = both
    rows, cols = region_box(torch_renderer, rig, region)
    diff = np.abs(a[:, rows, cols].astype(int) - b[:, rows, cols].astype(int))
    assert diff.size > 0 and diff.mean() < TOLERANCE
    # The regions move between frames, so matching frame by frame is not matching a still image.
    assert np.abs(b[1, rows, cols].astype(int) - b[0, rows, cols].astype(int)).mean() > 1.0 or region != "lips"


@needs_gl
def test_gl_is_independent_of_batching(rig, animated):
    """A frame alone = the same frame in a batch. llvmpipe draws one frame at a time: the same bytes. A
    GPU driver draws a batch as tiles, and a frame's tile offset can round one edge pixel the other
    way (on an H100, 1 pixel of 4096 off by one level): at most one level on 0.1% of the pixels."""
    r = Renderer.for_rig(rig, RenderConfig(size=64, backend="gl"))
    whole = r(*animated)
    alone = r(*(x[2:3] for x in animated))[0]
    if not r.gl.hardware:
        assert np.array_equal(whole[2], alone)
        return
    diff = np.abs(whole[2].astype(int) - alone.astype(int)).max(-1)
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3


@needs_gl
def test_gl_plain_shader_changes_no_pixel(rig, animated, monkeypatch):
    """The shader without lines, folds and brows for triangles that cannot carry them gives the same
    bytes as every triangle through the full shader."""
    fast = Renderer.for_rig(rig, RenderConfig(size=SIZE, backend="gl"))
    front, back = fast.gl.arrays
    plain = [a for a in front if "brow_tint" not in a.program]
    assert len(front) == 2 and len(plain) == 1  # both programs draw
    made = gl.GLDrawer.__init__

    def reference(self, *args, **kwargs):
        made(self, *args, **{**kwargs, "detailed": None})

    monkeypatch.setattr(gl.GLDrawer, "__init__", reference)
    slow = Renderer.for_rig(rig, RenderConfig(size=SIZE, backend="gl"))
    assert len(slow.gl.arrays[0]) == 1
    # Strong expressions, so that lines, folds and brows show (a talking face has none).
    verts, gaze, head = animated
    loud = rig(np.stack([rig.weights(p) for p in ({"browInnerUp": 1.0, "browOuterUpLeft": 1.0, "browOuterUpRight": 1.0},
                                                   {"noseSneerLeft": 1.0, "noseSneerRight": 1.0, "cheekSquintLeft": 1.0,
                                                    "cheekSquintRight": 1.0, "mouthSmileLeft": 1.0, "mouthSmileRight": 1.0})]))
    import torch

    detail = fast.wrinkles.attributes(torch.as_tensor(loud), len(loud[0]))  # (2, V, 6)
    assert detail[..., 2:4].amax() > 0.5 and detail[..., 5].amax() > 0.5  # lines and folds are drawn
    outside = ~fast.wrinkles.carriers()
    assert outside.any() and not detail[:, outside][..., [2, 3, 5]].any()  # none where no carrier is
    for args in ((verts, gaze, head), (loud,)):
        assert np.array_equal(fast(*args), slow(*args))


@needs_gl
def test_gl_draw_arguments_are_checked(rig):
    r = Renderer.for_rig(rig, RenderConfig(size=32, backend="gl"))
    tris = r.triangles.numpy()
    kwargs = dict(focal=1.0, distance=1.0, near=0.5, far=1.5, ortho=False, lights=np.eye(3)[:1], halfways=np.eye(3)[:1],
                  intensities=np.ones(1), ambient=0.1, back_light=0.3, background=np.zeros(3, np.uint8), tie_bias=1e-6)
    with pytest.raises(ValueError, match="detailed must have shape"):
        gl.GLDrawer(tris, len(r.material), 32, detailed=np.ones(3, bool), **kwargs)


@needs_gl
def test_gl_nearer_surface_wins_and_back_faces_lose_ties():
    # Two quads facing the camera, the red one nearer; then the same quad seen from behind.
    quad = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], np.float32)
    verts = np.concatenate([quad, quad + [0.2, 0.2, 0.1]])
    tris = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    colours = np.array([[0, 0, 1]] * 4 + [[1, 0, 0]] * 4, np.float32)
    frames = {b: Renderer(tris, verts, RenderConfig(size=64, pitch_deg=0, backend=b), vertex_colours=colours)(verts)
              for b in ("gl", "torch")}
    centre = frames["gl"][32, 36].astype(int)
    assert centre[0] > centre[2]  # red (the nearer quad) wins
    assert np.abs(frames["gl"].astype(int) - frames["torch"].astype(int)).mean() < 1.0


@needs_gl
def test_one_sided_triangles_hide_their_backs_in_both_backends():
    # One quad facing the camera, and the same quad wound the other way round (facing away).
    quad = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], np.float32)
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    blue = np.array([[0, 0, 1]] * 4, np.float32)
    for two_sided, backs in ((None, 1.0), ([False, False], 0.0), ([True, False], 0.5)):
        for backend in ("gl", "torch"):
            covered = []
            for winding in (tris, tris[:, ::-1]):
                r = Renderer(winding, quad, RenderConfig(size=32, pitch_deg=0, backend=backend), vertex_colours=blue,
                             two_sided=two_sided)
                frame = r(quad)
                covered.append((frame != frame[0, 0]).any(-1).mean())
            assert covered[0] > 0.2, backend  # the front always shows
            assert covered[1] == pytest.approx(backs * covered[0], abs=0.05), (backend, two_sided)


@needs_gl
@pytest.mark.parametrize("sharpness", [4.0, 1.0, 3.0, 0.5])  # squared twice, as is, pow, pow
def test_wrinkle_sharpen_is_the_power_torch_takes(sharpness):
    """The shader's `wrinkle_sharpen` (squarings for powers of two) against x ** sharpness in float32."""
    ctx = gl.gl_context()
    width = 64
    with gl._LOCK, ctx:
        program = ctx.program(
            vertex_shader="#version 330\nin vec2 p; void main() { gl_Position = vec4(p, 0.0, 1.0); }",
            fragment_shader="#version 330\n" + wrinkle_glsl(sharpness)
            + "out vec4 f; void main() { f = vec4(wrinkle_sharpen((gl_FragCoord.x - 0.5) / 63.0), 0.0, 0.0, 1.0); }")
        fbo = ctx.framebuffer(color_attachments=[ctx.texture((width, 1), 4, dtype="f4")])
        fbo.use()
        quad = ctx.buffer(np.array([-1, -1, 3, -1, -1, 3], np.float32).tobytes())
        ctx.vertex_array(program, [(quad, "2f", "p")]).render()
        got = np.frombuffer(fbo.read(components=1, dtype="f4"), np.float32)
    x = np.arange(width, dtype=np.float32) / 63
    np.testing.assert_allclose(got, x ** np.float32(sharpness), rtol=1e-5, atol=1e-6)


@needs_gl
def test_tiles_give_the_frames_of_one_frame_at_a_time(rig, animated):
    # The GPU path (several frames per draw, tiles of one framebuffer, one read) against one frame a call:
    # 4 tiles for 6 frames also covers a last, partial block.
    one = Renderer.for_rig(rig, RenderConfig(size=96, backend="gl", gl_tiles=1))
    tiled = Renderer.for_rig(rig, RenderConfig(size=96, backend="gl", gl_tiles=4))
    assert (one.gl.frames_per_call, tiled.gl.frames_per_call) == (1, 4)
    a, b = one(*animated), tiled(*animated)
    diff = np.abs(a.astype(int) - b.astype(int))
    # Tiles encode sRGB with the rasterizer's own table, one frame a call with the colour buffer's
    # (llvmpipe's is one level off for a few % of values); a tile's offset may round a rare sample.
    assert diff.max() <= 1 and diff.mean() < 0.05
    alone = tiled(*(x[3:4] for x in animated))[0]  # tile 0 alone against tile 3 of the block
    assert np.abs(alone.astype(int) - b[3].astype(int)).max() <= 1
    assert (b != b[:, :1, :1]).any(-1).mean() > 0.2
    torch_frames = Renderer.for_rig(rig, RenderConfig(size=96, backend="torch"))(*animated)
    assert np.abs(b.astype(int) - torch_frames.astype(int)).mean() < TOLERANCE / 10


@needs_gl
def test_yuv_frames_are_the_rgb_frames_converted(rig, animated):
    import torch

    from blendtalk.render.yuv import rgb_to_yuv420

    for backend, tiles in (("gl", 1), ("gl", 4), ("torch", None)):  # tiles convert in OpenGL, the others with torch
        r = Renderer.for_rig(rig, RenderConfig(size=64, backend=backend, gl_tiles=tiles))
        rgb, yuv = r(*animated), r(*animated, pixel_format="yuv420p")
        assert yuv.shape == (len(rgb), 96, 64) and np.array_equal(yuv, rgb_to_yuv420(torch.from_numpy(rgb)).numpy())
    with pytest.raises(ValueError, match="pixel_format"):
        r(*animated, pixel_format="nv12")


@pytest.mark.gpu
def test_auto_on_cuda_draws_with_the_gpu_driver_when_there_is_one(rig, animated):
    ok, name = gl.gl_status()
    if not (ok and gl.is_hardware(name)):
        pytest.skip(f"no OpenGL on a GPU driver here ({name})")
    a = Renderer.for_rig(rig, RenderConfig(size=SIZE), device="cuda")
    b = Renderer.for_rig(rig, RenderConfig(size=SIZE, backend="torch"), device="cuda")
    assert a.backend == "gl" and a.gl.frames_per_call > 1
    diff = np.abs(a(*animated).astype(int) - b(*animated).astype(int))
    assert diff.mean() < TOLERANCE / 10


def test_forced_off_falls_back_to_torch(rig, animated, monkeypatch):
    monkeypatch.setenv(gl.RENDER_ENV, "torch")
    r = Renderer.for_rig(rig, RenderConfig(size=64))
    assert r.backend == "torch" and r.gl is None
    frames = r(*animated)
    assert frames.shape == (len(animated[0]), 64, 64, 3) and (frames != frames[:, :1, :1]).any()
    with pytest.raises(RuntimeError, match="OpenGL"):
        Renderer.for_rig(rig, RenderConfig(size=64, backend="gl"))


def test_missing_opengl_falls_back_with_one_log_line(rig, monkeypatch, caplog):
    def broken():
        raise ImportError("No module named 'moderngl'")

    monkeypatch.setattr(gl, "gl_context", broken)
    gl.log_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger=gl.__name__):
        first = Renderer.for_rig(rig, RenderConfig(size=64))
        second = Renderer.for_rig(rig, RenderConfig(size=64))
    assert first.backend == second.backend == "torch"
    lines = [r for r in caplog.records if r.name == gl.__name__]
    assert len(lines) == 1 and "moderngl" in lines[0].getMessage()
    gl.log_fallback.cache_clear()


def test_backend_is_checked():
    with pytest.raises(ValueError, match="backend"):
        RenderConfig(backend="vulkan")


def test_template_shading_is_cached_and_the_cache_gives_the_same_frames(rig, tmp_path, monkeypatch):
    monkeypatch.setenv("BLENDTALK_CACHE", str(tmp_path))
    first = Renderer.for_rig(rig, RenderConfig(size=64, backend="torch"))
    assert len(list(tmp_path.glob("shading_*.npz"))) == 1
    again = Renderer.for_rig(rig, RenderConfig(size=64, backend="torch"))
    assert torch_equal(first.material, again.material)
    other = Renderer.for_rig(rig, RenderConfig(size=64, backend="torch", pitch_deg=10))  # another camera: another entry
    assert len(list(tmp_path.glob("shading_*.npz"))) == 2 and not torch_equal(first.material, other.material)


def test_the_video_cameras_template_shading_ships(rig, tmp_path, monkeypatch):
    # A new install's first video reads the shipped rig's shading (tools/build_face_rig.py writes it):
    # computing it took half a second of the core that the speech model and the DFM need.
    monkeypatch.setenv("BLENDTALK_CACHE", str(tmp_path))
    shipped = Pipeline(rig=rig).renderer(256)
    assert not list(tmp_path.glob("shading_*.npz"))  # read, not computed
    monkeypatch.setattr(shading, "SHIPPED_SHADING_DIR", tmp_path / "none")
    computed = Pipeline(rig=rig).renderer(256)
    assert len(list(tmp_path.glob("shading_*.npz"))) == 1
    assert np.allclose(shipped.material.numpy(), computed.material.numpy(), atol=1e-6)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


@needs_gl
def test_the_context_made_on_one_thread_draws_on_another():
    # EGL binds a context to one thread at a time. The process's context is made where OpenGL is first
    # asked about (here the main thread, as collecting this file does), and must still draw on another
    # (a server's worker thread): it once stayed bound to its first thread, and the worker's program failed.
    code = """
import threading
import numpy as np
import blendtalk.render.gl as gl
from blendtalk.face.rig import load_rig
from blendtalk.render.renderer import Renderer, RenderConfig
assert gl.gl_status()[0]
rig, frames = load_rig(), []
def draw():
    frames.append(Renderer.for_rig(rig, RenderConfig(size=64, backend="gl"))(rig.vertices))
worker = threading.Thread(target=draw)
worker.start()
worker.join()
print(gl.gl_status()[1], frames[0].shape, int((frames[0] != frames[0][0, 0]).any(-1).sum()))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    name, _, rest = done.stdout.strip().rpartition(" (64, 64, 3) ")
    assert name and int(rest) > 500, done.stdout  # a renderer's name, and a face drawn


def _long(animated, repeat: int = 7):
    """The animated frames repeated: a clip of several drawing blocks (42 frames)."""
    return tuple(np.concatenate([a] * repeat) for a in animated)


@needs_gl
@pytest.mark.skipif(not gl_worker.available(), reason="a drawing worker needs memfd (Linux) and two cores")
def test_a_worker_process_draws_a_share_of_the_same_frames(rig, animated):
    clip = _long(animated)
    alone = Renderer.for_rig(rig, RenderConfig(size=128, backend="gl", gl_worker=False))
    shared = Renderer.for_rig(rig, RenderConfig(size=128, backend="gl"))
    if shared.gl.hardware:
        pytest.skip("a GPU driver draws blocks of tiles itself, with no worker")
    assert not alone.start_worker() and shared.start_worker()
    assert shared._worker.ready(timeout=None)
    frames = shared(*clip)
    assert shared._worker.drawn >= 8  # it drew at least one block
    assert np.array_equal(frames, alone(*clip))
    assert np.array_equal(shared(*animated), alone(*animated))  # a clip of one block: drawn here


@needs_gl
@pytest.mark.skipif(not gl_worker.available(), reason="a drawing worker needs memfd (Linux) and two cores")
def test_a_worker_that_dies_leaves_the_frames_whole(rig, animated, caplog):
    clip = _long(animated)
    r = Renderer.for_rig(rig, RenderConfig(size=128, backend="gl"))
    if r.gl.hardware:
        pytest.skip("a GPU driver draws blocks of tiles itself, with no worker")
    assert r.start_worker() and r._worker.ready(timeout=None)
    expected = r(*clip)
    process = r._worker._proc
    process.kill()
    process.wait()
    with caplog.at_level(logging.WARNING, logger="blendtalk.render.renderer"):
        assert np.array_equal(r(*clip), expected)
    assert "drawing every frame in this process" in caplog.text
    assert r._worker is None and not r.start_worker()  # this renderer draws alone from now on
    assert np.array_equal(r(*clip), expected)


@needs_gl
@pytest.mark.skipif(not gl_worker.available(), reason="a drawing worker needs memfd (Linux) and two cores")
def test_a_worker_exits_when_its_pipe_closes(rig):
    r = Renderer.for_rig(rig, RenderConfig(size=64, backend="gl"))
    if r.gl.hardware:
        pytest.skip("a GPU driver draws blocks of tiles itself, with no worker")
    assert r.start_worker() and r._worker.ready(timeout=None)
    process = r._worker._proc
    r._worker.close()  # closes its stdin, as the worker's garbage collection or this process's death does
    assert process.wait(timeout=10) == 0


@needs_gl
def test_a_gpu_drivers_block_ahead_gives_the_same_frames(rig, animated):
    # On a GPU driver the next block's attributes are computed on a thread while OpenGL draws
    # (`Renderer._draw_gl_ahead`); CI has only llvmpipe, so the drawer is told it is hardware.
    clip = _long(animated, 3)
    r = Renderer.for_rig(rig, RenderConfig(size=64, backend="gl", gl_worker=False))
    expected = r(*clip)
    r.gl.hardware = True
    assert np.array_equal(r(*clip), expected)



@needs_gl
@pytest.mark.skipif(not gl_worker.available(), reason="a drawing worker needs memfd (Linux) and two cores")
def test_a_forked_copy_leaves_the_parents_worker_alone(rig, animated):
    # A process forked after a renderer started its worker inherits the worker's pipes: the copy must
    # neither talk to that worker nor stop it. (The copy is told by the worker's owner pid, faked here.)
    r = Renderer.for_rig(rig, RenderConfig(size=64, backend="gl"))
    if r.gl.hardware:
        pytest.skip("a GPU driver draws blocks of tiles itself, with no worker")
    assert r.start_worker() and r._worker.ready(timeout=None)
    inherited = r._worker
    inherited.owner = -1  # as a forked child sees its parent's worker
    assert r.start_worker() and r._worker is not inherited  # a worker of its own
    inherited.close()  # a no-op for a copy that does not own it
    assert inherited._proc is not None and inherited._proc.poll() is None
    clip = _long(animated, 3)
    assert np.array_equal(r(*clip), Renderer.for_rig(rig, RenderConfig(size=64, backend="gl", gl_worker=False))(*clip))
    inherited.owner = os.getpid()
    inherited.close()

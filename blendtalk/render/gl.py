"""OpenGL back end of the renderer: the same frames as the torch rasterizer, drawn by OpenGL.

On a machine without a GPU this is Mesa's llvmpipe (a multi-threaded, JIT-compiled software
rasterizer) through a headless EGL context, via moderngl: several times faster than the torch
rasterizer on the CPU. It draws only; everything that decides the look is computed by
`render.renderer.Renderer` exactly as for the torch path: the dressed, head-rotated vertices in
camera space, their camera-space normals and their material (albedo after the cavity tint, ambient
occlusion and crease darkening, plus the sheen). The shaders then apply the same projection, the
same depth code (1/depth, affine in screen space; back faces lose depth ties), perspective-correct
interpolation, the same Lambert + Blinn-Phong shading and the same 4096-step quantisation before
the sRGB encoding, which the sRGB colour buffer does (llvmpipe's own approximation: 7% of pixels
one 8-bit level off the torch path's table, a mean of 0.03 levels on a 10 s clip).

On a GPU host EGL draws on the GPU's own driver where glvnd can reach it (`egl_vendor` registers
NVIDIA's where the system did not). There the per-frame work around the draw (an upload, a
synchronous read back) would cost more than the drawing, so a hardware driver draws a whole block
of frames per call instead: their attributes go up in one write, each frame is drawn into its own
tile of a tall framebuffer (its own viewport and scissor, so tiles cannot touch), and the block
comes back in one read, already laid out as (T, H, W, 3), or converted to the video encoder's
yuv420p by a second pass (`render.yuv`) and read at half the bytes. The tiles encode sRGB with the
torch path's own table, so their bytes are the rasterizer's; a frame's tile offset can round an
edge pixel the other way (on an H100 one pixel of 4096 at 64 px, one level). llvmpipe keeps drawing
one frame at a time into its sRGB colour buffer (see `GLDrawer.__init__`).

The context is created once per process on first use (`gl_context`) and reused by every renderer;
a lock makes one thread draw at a time, and each draw makes the context current on its own thread
(the app renders from worker threads). Set BLENDTALK_RENDER=torch to never use OpenGL.
"""

from __future__ import annotations

import functools
import logging
import os
import threading

import numpy as np

logger = logging.getLogger(__name__)

RENDER_ENV = "BLENDTALK_RENDER"  # "torch" forces the torch rasterizer; "gl" makes a missing OpenGL an error
SRGB_STEPS = 4096  # the torch path's sRGB lookup table has this many entries; the shader quantises alike
_GL_POLYGON_OFFSET_FILL = 0x8037  # GLenum
_GL_FRAMEBUFFER_SRGB = 0x8DB9  # GLenum: writes to an sRGB colour buffer are encoded from linear
_GL_SRGB8_ALPHA8 = 0x8C43  # GLenum: 8-bit sRGB-encoded colour buffer
_DEPTH_BITS = 24  # the depth renderbuffer's precision: polygon offset units are steps of 2**-24
ATTRIBUTES = 19  # floats per vertex: position, normal, albedo + sheen, wrinkle lines (4), fold (2) and brow (3)
_LAYOUT = (("in_pos", 3, 0), ("in_normal", 3, 3), ("in_material", 4, 6), ("in_wrinkle", 4, 10), ("in_fold", 2, 14),
           ("in_brow", 3, 16))  # (shader input, floats, first float) of each vertex's ATTRIBUTES
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "software")  # GL_RENDERER names of CPU rasterizers
MAX_TILES = 64  # frames per draw call on a hardware driver: 64 tiles of 512 px fill the 32768 px framebuffer limit
_LOCK = threading.Lock()  # moderngl objects of one context must not be used by two threads at once

_VERTEX_SHADER = """
#version 330
uniform float focal;      // half-frames per unit of x / depth (perspective) or per unit (orthographic)
uniform float distance;   // camera distance: depth = distance - z
uniform vec2 code_range;  // perspective: (1/far, 1/near) of the depth code; orthographic: (near, far)
uniform int ortho;
in vec3 in_pos;           // camera space, +z toward the camera
in vec3 in_normal;        // camera space, any length
in vec4 in_material;      // linear albedo (3) and sheen (1)
in vec4 in_wrinkle;       // `render.wrinkles`: line phases (2) and amounts (2)
in vec2 in_fold;          // `render.wrinkles`: fold coordinate and depth
in vec3 in_brow;          // `face.brows`: rest-pose brow coordinates and gate
out vec3 v_normal;
out vec4 v_wrinkle;
out vec2 v_fold;
out vec3 v_brow;
out vec3 v_base;
out float v_sheen;
void main() {
    float depth = distance - in_pos.z;
    float x = in_pos.x * focal;
    float y = -in_pos.y * focal;  // framebuffer rows are read bottom-up: image row 0 comes first
    if (ortho == 1) {
        float q = (depth - code_range.x) / (code_range.y - code_range.x);
        gl_Position = vec4(x, y, 2.0 * q - 1.0, 1.0);
    } else {
        // q = (1/near - 1/depth) / (1/near - 1/far); z_ndc = 2q - 1 after the divide by w = depth.
        float q_w = (code_range.y * depth - 1.0) / (code_range.y - code_range.x);
        gl_Position = vec4(x, y, 2.0 * q_w - depth, depth);
    }
    v_normal = in_normal;
    v_base = in_material.rgb;
    v_sheen = in_material.a;
    v_wrinkle = in_wrinkle;
    v_fold = in_fold;
    v_brow = in_brow;
}
"""

_FRAGMENT_SHADER = """
#version 330
const int LIGHTS = {lights};
uniform vec3 light_dirs[LIGHTS];
uniform vec3 halfways[LIGHTS];
uniform float intensities[LIGHTS];
uniform float ambient;
uniform float back_light;  // surfaces seen from behind get this share of the light
uniform float srgb_steps;
{encode_declarations}{detail_declarations}
in vec3 v_normal;
in vec3 v_base;
in float v_sheen;
out vec4 f_color;
void main() {
    bool back = !gl_FrontFacing;
    float scale = inversesqrt(max(dot(v_normal, v_normal), 1e-20));
    vec3 n = v_normal * (back ? -scale : scale);
    float diffuse = 0.0;
    float spec = 0.0;
    for (int i = 0; i < LIGHTS; i++) {
        diffuse += intensities[i] * max(dot(n, light_dirs[i]), 0.0);
        float h = max(dot(n, halfways[i]), 0.0);
        h *= h; h *= h; h *= h; h *= h;  // h ** 16, as the torch path squares it
        spec += intensities[i] * h;
    }
    float light = (diffuse + ambient) * (back ? back_light : 1.0);
    vec3 base = v_base;
{detail}    vec3 c = base * light + (back ? 0.0 : v_sheen * spec);
    vec3 q = floor(clamp(c, 0.0, 1.0) * (srgb_steps - 1.0) + 0.5);
{encode}}
"""
# How `_FRAGMENT_SHADER` writes its colour, chosen when the program is built: a branch on a uniform
# cost llvmpipe 5-6% of a frame's CPU even where it was never taken (docs/experiments.md).
# Tiles: the sRGB byte from the torch path's own table, into a plain colour buffer.
_TABLE_ENCODE = ("""uniform sampler2D srgb_table;    // (srgb_steps, 1) R8: the torch path's own sRGB table
""", """    ivec3 i = ivec3(q);
    f_color = vec4(texelFetch(srgb_table, ivec2(i.r, 0), 0).r, texelFetch(srgb_table, ivec2(i.g, 0), 0).r,
                   texelFetch(srgb_table, ivec2(i.b, 0), 0).r, 1.0);
""")
# One frame at a time: linear, which the sRGB colour buffer encodes.
_BUFFER_ENCODE = ("", "    f_color = vec4(q / (srgb_steps - 1.0), 1.0);\n")
# The fine lines, folds and brows of `_FRAGMENT_SHADER`: only the program for triangles that can carry them has these.
_DETAIL_DECLARATIONS = """
uniform vec3 brow_tint;   // albedo factor of full brow paint
{functions}
in vec4 v_wrinkle;
in vec2 v_fold;
in vec3 v_brow;
"""
_DETAIL = """
    float lines = 1.0;
    if (v_wrinkle.z != 0.0 || v_wrinkle.w != 0.0 || v_fold.y != 0.0)  // most skin has none: skip the cosines
        lines = wrinkle_factor(v_wrinkle, v_fold);
    base *= lines;
    if (v_brow.z > 0.999) base *= mix(vec3(1.0), brow_tint, brow_density(v_brow));  // only skin that can carry a brow pays
"""

# Tiles of sRGB frames -> yuv420p tiles (`render.yuv`: BT.601 limited range, 2x2 chroma means), one
# R8 texel per output byte: tile t holds rows [t*3N/2, (t+1)*3N/2), Y (N rows), then U and V (N/4 rows each).
_YUV_VERTEX_SHADER = """
#version 330
void main() {  // one triangle over the whole target
    vec2 p = vec2((gl_VertexID << 1) & 2, gl_VertexID & 2);
    gl_Position = vec4(2.0 * p - 1.0, 0.0, 1.0);
}
"""

_YUV_FRAGMENT_SHADER = """
#version 330
uniform sampler2D frames;  // RGBA8 tiles of N x N sRGB frames, tile t at rows [t*N, (t+1)*N)
uniform int n;
out float f_byte;
vec3 rgb(int x, int y) { return texelFetch(frames, ivec2(x, y), 0).rgb * 255.0; }
void main() {
    int x = int(gl_FragCoord.x), row = int(gl_FragCoord.y);
    int rows = 3 * n / 2;
    int t = row / rows, r = row - t * rows;
    float v;
    if (r < n) {
        v = 16.0 + dot(rgb(x, t * n + r), vec3(65.481, 128.553, 24.966) / 255.0);
    } else {
        int k = (r - n) * n + x, quarter = n * n / 4;
        int plane = k / quarter, j = k - plane * quarter, half_n = n / 2;
        int cx = 2 * (j % half_n), cy = t * n + 2 * (j / half_n);
        vec3 m = (rgb(cx, cy) + rgb(cx + 1, cy) + rgb(cx, cy + 1) + rgb(cx + 1, cy + 1)) * 0.25;
        vec3 w = plane == 0 ? vec3(-37.797, -74.203, 112.0) : vec3(112.0, -93.786, -18.214);
        v = 128.0 + dot(m, w / 255.0);
    }
    f_byte = floor(clamp(v + 0.5, 0.0, 255.0)) / 255.0;
}
"""


def gl_wanted() -> bool:
    """False when BLENDTALK_RENDER=torch asks for the torch rasterizer."""
    return os.environ.get(RENDER_ENV, "").strip().lower() != "torch"


@functools.lru_cache(maxsize=None)
def log_fallback(why: str) -> None:
    """One log line per process (and reason) saying that the torch rasterizer draws instead."""
    logger.warning("drawing with the torch rasterizer: %s", why)


@functools.lru_cache(maxsize=1)
def gl_context():
    """The process's headless OpenGL context (moderngl over EGL), created on first use; raises
    ImportError or another Exception where moderngl, EGL or an OpenGL 3.3 driver is missing."""
    import moderngl

    from .egl_vendor import prepare_nvidia_egl

    prepare_nvidia_egl()  # before EGL's first call: glvnd reads its vendor list once
    ctx = moderngl.create_standalone_context(backend="egl", require=330)
    ctx.info  # read while current: moderngl keeps this first reading (read later unbound, it is empty)
    # EGL binds a context to one thread at a time, and creating it bound it to this one: leaving a
    # `with` releases it for whichever thread draws next (each under _LOCK, in `with ctx`).
    with ctx:
        pass
    return ctx


def is_hardware(renderer: str) -> bool:
    """True when the GL_RENDERER string names a GPU driver rather than a software rasterizer."""
    return not any(name in renderer.lower() for name in SOFTWARE_RENDERERS)


def choose(backend: str, device_type: str, supersample: int, status=None) -> tuple[bool, str | None]:
    """Whether a renderer with this `RenderConfig.backend`, device type ("cpu", "cuda", ...) and
    supersampling draws with OpenGL: (True, None), or (False, why not: a line for the log, None
    where nothing was expected of OpenGL). "auto" takes llvmpipe on a CPU device (several times the
    torch rasterizer there) but on a CUDA device only a GPU driver: the torch rasterizer on the GPU
    outruns llvmpipe. status: () -> (ok, renderer name or why not), default `gl_status`."""
    if backend == "torch" or (backend == "auto" and (device_type not in ("cpu", "cuda") or supersample > 1)):
        return False, None
    ok, name = (status or gl_status)()
    if not ok:
        return False, f"OpenGL is unavailable ({name})"
    if backend == "auto" and device_type == "cuda" and not is_hardware(name):
        return False, f"OpenGL here is {name}, a software rasterizer, slower than the torch rasterizer on the GPU"
    return True, None


def gl_status() -> tuple[bool, str]:
    """(True, renderer name) where OpenGL can draw, else (False, why not)."""
    if not gl_wanted():
        return False, f"{RENDER_ENV}=torch"
    try:
        ctx = gl_context()
    except Exception as err:  # no moderngl, no libEGL, no driver: the torch rasterizer draws instead
        return False, f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else 'no details'}"
    return True, ctx.info.get("GL_RENDERER", "OpenGL")


class GLDrawer:
    """Draw per-vertex shaded frames of one triangle list with OpenGL.

    triangles: (F, 3) int, the renderer's (face and dressing), indices below num_vertices (all the
    vertices drawn, V+E). size: frame side in px. camera:
    focal, distance, (near, far) depth range and whether it is orthographic, as `Renderer` frames
    them. lights: (L, 3) unit directions and (L, 3) Blinn-Phong half-vectors in camera space, (L,)
    intensities. background: (3,) uint8 sRGB. tie_bias: window depth that back faces lose ties by.
    wrinkle: (strength, sharpness, fold strength) of the fine lines and folds (`render.wrinkles`); 0 draws none.
    brow_tint: (3,) albedo factor of full brow paint (`face.brows`). tiles: frames drawn per call
    (None: MAX_TILES on a hardware driver, 1 on a software one); `frames_per_call` says which.
    srgb_table: (SRGB_STEPS,) uint8, the torch path's sRGB table, which tiles encode with (exactly
    the rasterizer's bytes for the same linear value); one frame at a time encodes with the sRGB
    colour buffer instead. Needed for tiles > 1.
    detailed: optional (F,) bool, the triangles with a corner that can carry a fine line, a fold or
    a brow (a non-zero wrinkle amount or fold depth, or a brow gate, in any frame); the others are
    drawn by a program without those terms and their 9 interpolated values (the same pixels, for
    less work per pixel), each pass's plain triangles before its detailed ones. None: all detailed.
    two_sided: optional (F,) bool, the triangles whose back faces are drawn (the second pass draws
    only these: a quarter of llvmpipe's time when it drew all); None: every triangle.
    detail_functions: GLSL of the detailed program's `wrinkle_factor(vec4, vec2)` (`render.wrinkles`)
    and `brow_density(vec3)` (`face.brows`); given as source, so that this module needs no torch and a
    `gl_worker` process starts fast.
    """

    def __init__(self, triangles: np.ndarray, num_vertices: int, size: int, *, focal: float, distance: float, near: float, far: float,
                 ortho: bool, lights: np.ndarray, halfways: np.ndarray, intensities: np.ndarray, ambient: float,
                 back_light: float, background: np.ndarray, tie_bias: float, wrinkle: tuple[float, float, float] = (0.0, 1.0, 0.0),
                 brow_tint: np.ndarray = np.ones(3), tiles: int | None = None, srgb_table: np.ndarray | None = None,
                 detailed: np.ndarray | None = None, two_sided: np.ndarray | None = None, detail_functions: str = ""):
        import moderngl

        self.ctx = ctx = gl_context()
        self.size = size
        self.background = tuple(float(c) / 255 for c in background) + (1.0,)
        triangles = np.ascontiguousarray(triangles, dtype=np.uint32)
        detailed = np.ones(len(triangles), bool) if detailed is None else np.asarray(detailed, bool)
        two_sided = np.ones(len(triangles), bool) if two_sided is None else np.asarray(two_sided, bool)
        for name, mask in (("detailed", detailed), ("two_sided", two_sided)):
            if mask.shape != (len(triangles),):
                raise ValueError(f"{name} must have shape ({len(triangles)},), got {mask.shape}")
        with _LOCK, ctx:
            uniforms = {"focal": focal, "distance": distance, "ortho": int(ortho),
                        "code_range": (near, far) if ortho else (1 / far, 1 / near),
                        "ambient": ambient, "back_light": back_light,
                        "srgb_steps": float(SRGB_STEPS), "wrinkle_shape": tuple(wrinkle),
                        "brow_tint": tuple(float(c) for c in brow_tint)}
            # llvmpipe: one frame at a time; frames drawn side by side into a wider framebuffer were no
            # faster there and made a frame's pixels depend (by rounding) on its place in the batch.
            # A GPU: tiles of a tall framebuffer, MAX_TILES frames per call (see the module's doc).
            limit = int(ctx.info.get("GL_MAX_RENDERBUFFER_SIZE", size))
            fit = max(1, 2 * limit // (3 * size))  # the yuv420p target is 3/2 as tall as the frames
            self.hardware = is_hardware(ctx.info.get("GL_RENDERER", ""))
            self.tiles = min(MAX_TILES, fit) if self.hardware else 1
            if tiles is not None:
                self.tiles = max(1, min(int(tiles), fit))
            if self.tiles > 1 and srgb_table is None:
                raise ValueError("tiles > 1 need the sRGB table (srgb_table)")
            encode_declarations, encode = _TABLE_ENCODE if self.tiles > 1 else _BUFFER_ENCODE
            # Each pass draws the plain triangles, then the detailed ones, each kind in the given order:
            # only an exact depth tie between a plain and a detailed triangle (the earlier drawn wins
            # it) could come out otherwise than in one draw of all.
            self.kinds = [k for k in (False, True) if (detailed == k).any()]
            self.back_kinds = [k for k in self.kinds if ((detailed == k) & two_sided).any()]
            self.programs, self.indices = {}, {}
            for with_detail in self.kinds:
                declarations = _DETAIL_DECLARATIONS.replace("{functions}", detail_functions)
                fragment = (_FRAGMENT_SHADER.replace("{lights}", str(len(intensities)))
                            .replace("{detail_declarations}", declarations if with_detail else "")
                            .replace("{detail}", _DETAIL if with_detail else "")
                            .replace("{encode_declarations}", encode_declarations).replace("{encode}", encode))
                program = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=fragment)
                for name, value in uniforms.items():
                    if name in program:  # the plain program has no detail uniforms
                        program[name].value = value
                for name, value in (("light_dirs", lights), ("halfways", halfways), ("intensities", intensities)):
                    program[name].write(np.asarray(value, np.float32).tobytes())
                self.programs[with_detail] = program
                for back in (False, True):
                    chosen = (detailed == with_detail) & (two_sided if back else True)
                    if chosen.any():
                        self.indices[with_detail, back] = ctx.buffer(np.ascontiguousarray(triangles[chosen]).tobytes())
            self.num_vertices = int(num_vertices)  # a vertex no triangle uses (a rig's stray point) still comes in
            self.vbo = ctx.buffer(reserve=self.num_vertices * ATTRIBUTES * 4, dynamic=True)
            self.arrays = self._arrays(self.vbo, 0)
            # Tiles: plain bytes that the shader encodes from the table (the YUV pass reads them as they are).
            colour = ctx.texture((size, size * self.tiles), 4, internal_format=None if self.tiles > 1 else _GL_SRGB8_ALPHA8)
            self.fbo = ctx.framebuffer(color_attachments=[colour], depth_attachment=ctx.depth_renderbuffer((size, size * self.tiles)))
            if self.tiles > 1:
                table = np.ascontiguousarray(srgb_table, dtype=np.uint8)
                self.srgb_texture = ctx.texture((len(table), 1), 1, table.tobytes())
                self.srgb_texture.filter = (moderngl.NEAREST, moderngl.NEAREST)
                for program in self.programs.values():
                    program["srgb_table"].value = 1
                self.colour = colour
                self.colour.filter = (moderngl.NEAREST, moderngl.NEAREST)
                self.yuv_program = ctx.program(vertex_shader=_YUV_VERTEX_SHADER, fragment_shader=_YUV_FRAGMENT_SHADER)
                self.yuv_program["frames"].value = 0
                self.yuv_program["n"].value = size
                self.yuv_vao = ctx.vertex_array(self.yuv_program, [])
                self.yuv_fbo = ctx.framebuffer(color_attachments=[ctx.texture((size, size * 3 // 2 * self.tiles), 1)])
            if self.tiles > 1:  # vertex arrays per tile, reading its frame's slice of one buffer
                self.block = ctx.buffer(reserve=self.tiles * self.num_vertices * ATTRIBUTES * 4, dynamic=True)
                self.tile_vaos = [self._arrays(self.block, t * self.num_vertices) for t in range(self.tiles)]
            # Back faces lose depth ties to front faces (folds where they touch, e.g. eyelid corners):
            # they are drawn in a second pass, pushed back by `tie_bias` in units of the depth buffer's
            # step. Not through gl_FragDepth, which would turn off the early depth test.
            self.tie_units = float(tie_bias * (1 << _DEPTH_BITS))

    def __call__(self, attributes: np.ndarray, out: np.ndarray | None = None, pixel_format: str = "rgb24") -> np.ndarray:
        """attributes (T, V, 19) float32: camera-space position (3), camera-space normal (3),
        linear albedo (3), sheen (1), wrinkle (6, `render.wrinkles`) and brow (3, `face.brows`) per vertex -> uint8 frames (T, size, size, 3),
        or with pixel_format "yuv420p" (tiles > 1 only) (T, 3 size/2, size) as `yuv.rgb_to_yuv420`
        makes them. out: optional uint8 array of that shape to write into (returned)."""
        t_count, v_count, width = attributes.shape
        if v_count != self.num_vertices or width != ATTRIBUTES:
            raise ValueError(f"attributes must have shape (T, {self.num_vertices}, {ATTRIBUTES}), got {attributes.shape}")
        n = self.size
        yuv = pixel_format == "yuv420p"
        if yuv and (self.tiles == 1 or n % 2):
            raise ValueError("yuv420p frames come from tiles of an even size only; convert RGB frames with render.yuv.rgb_to_yuv420")
        shape = (t_count, n * 3 // 2, n) if yuv else (t_count, n, n, 3)
        if out is None:
            out = np.empty(shape, np.uint8)
        elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous uint8 array of shape {shape}, got {out.dtype} {out.shape}")
        attributes = np.ascontiguousarray(attributes, dtype=np.float32)
        with _LOCK, self.ctx:
            import moderngl

            ctx = self.ctx
            self.fbo.use()
            ctx.enable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
            ctx.front_face = "cw"  # screen y points down, so a triangle facing us winds clockwise
            if self.tiles > 1:
                for start in range(0, t_count, self.tiles):
                    self._draw_tiles(attributes[start : start + self.tiles], out[start : start + self.tiles], yuv)
                return out
            self.fbo.viewport = (0, 0, n, n)
            for t in range(t_count):
                self.fbo.clear(*self.background, depth=1.0)  # already sRGB: cleared before encoding is on
                ctx.enable_direct(_GL_FRAMEBUFFER_SRGB)
                self.vbo.write(attributes[t])
                self._passes([self.arrays])
                # Read the stored sRGB bytes (with encoding on, GL would decode them to linear).
                # Rows come bottom-up, which the shader's flipped y turns into image order.
                ctx.disable_direct(_GL_FRAMEBUFFER_SRGB)
                self.fbo.read_into(out[t], viewport=(0, 0, n, n), components=3, alignment=1)
        return out

    def _arrays(self, buffer, first: int) -> tuple[list, list]:
        """The vertex arrays of the front pass and of the back pass (`_array` of each kind)."""
        return [self._array(k, False, buffer, first) for k in self.kinds], [self._array(k, True, buffer, first) for k in self.back_kinds]

    def _array(self, with_detail: bool, back: bool, buffer, first: int):
        """A vertex array of one kind of triangle (of the two-sided ones for the `back` pass), reading
        vertex `first` on of `buffer`; the plain program reads position, normal and material only
        (it skips the 9 detail floats)."""
        program, stride = self.programs[with_detail], ATTRIBUTES * 4
        vao = self.ctx.vertex_array(program, [], index_buffer=self.indices[with_detail, back], index_element_size=4)
        for name, width, at in _LAYOUT:
            if name in program:
                vao.bind(program[name].location, "f", buffer, f"{width}f", offset=first * stride + 4 * at, stride=stride)
        return vao

    @property
    def frames_per_call(self) -> int:
        """Frames this drawer draws per block: feed it at least this many at a time."""
        return self.tiles

    def _passes(self, arrays, boxes=None) -> None:
        """Draw frames from their (front, back) vertex arrays (`_arrays`), each frame into its
        viewport box where boxes are given: front faces of all, then back faces."""
        import moderngl

        ctx = self.ctx
        for back in (False, True):
            # Pass 1: surfaces facing the camera. Pass 2: surfaces seen from behind, a tie further away.
            ctx.cull_face = "front" if back else "back"
            if back:
                ctx.polygon_offset = (0.0, self.tie_units)
                ctx.enable_direct(_GL_POLYGON_OFFSET_FILL)
            else:
                ctx.disable_direct(_GL_POLYGON_OFFSET_FILL)
            for i, frame in enumerate(arrays):
                if boxes is not None:
                    self.fbo.viewport = self.fbo.scissor = boxes[i]
                for vao in frame[back]:
                    vao.render(moderngl.TRIANGLES)

    def _draw_tiles(self, attributes: np.ndarray, out: np.ndarray, yuv: bool) -> None:
        """Attributes (B, V, 19) of up to `tiles` frames -> uint8 frames written into out (B, H, W, 3),
        or (B, 3H/2, W) yuv420p: frame t drawn into rows [t*H, (t+1)*H) of the framebuffer (its own
        viewport and scissor), all read back in one call."""
        import moderngl

        ctx, n, count = self.ctx, self.size, len(attributes)
        self.fbo.scissor = None
        self.fbo.clear(*self.background, depth=1.0)  # all tiles at once; the background is already sRGB bytes
        self.block.write(attributes)
        self.srgb_texture.use(1)
        self._passes(self.tile_vaos[:count], [(0, t * n, n, n) for t in range(count)])
        self.fbo.scissor = None
        if not yuv:
            # Bottom-up rows of the stacked tiles: frame after frame, each in image order (flipped y).
            self.fbo.read_into(out, viewport=(0, 0, n, n * count), components=3, alignment=1)
            return
        rows = n * 3 // 2 * count
        self.yuv_fbo.use()
        self.yuv_fbo.viewport = self.yuv_fbo.scissor = (0, 0, n, rows)
        ctx.disable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
        self.colour.use(0)
        self.yuv_vao.render(moderngl.TRIANGLES, vertices=3)
        self.yuv_fbo.read_into(out, viewport=(0, 0, n, rows), components=1, alignment=1)
        self.fbo.use()
        ctx.enable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)

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

The context is created once per process on first use (`gl_context`) and reused by every renderer;
a lock makes one thread draw at a time, and each draw makes the context current on its own thread
(the app renders from worker threads). Set BLENDTALK_RENDER=torch to never use OpenGL.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading

import numpy as np

from ..face.brows import brow_glsl
from .wrinkles import wrinkle_glsl

logger = logging.getLogger(__name__)

RENDER_ENV = "BLENDTALK_RENDER"  # "torch" forces the torch rasterizer; "gl" makes a missing OpenGL an error
SRGB_STEPS = 4096  # the torch path's sRGB lookup table has this many entries; the shader quantises alike
_GL_POLYGON_OFFSET_FILL = 0x8037  # GLenum
_GL_FRAMEBUFFER_SRGB = 0x8DB9  # GLenum: writes to an sRGB colour buffer are encoded from linear
_GL_SRGB8_ALPHA8 = 0x8C43  # GLenum: 8-bit sRGB-encoded colour buffer
_DEPTH_BITS = 24  # the depth renderbuffer's precision: polygon offset units are steps of 2**-24
ATTRIBUTES = 19  # floats per vertex: position, normal, albedo + sheen, wrinkle lines (4), fold (2) and brow (3)
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
{detail_declarations}
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
    c = floor(clamp(c, 0.0, 1.0) * (srgb_steps - 1.0) + 0.5) / (srgb_steps - 1.0);
    f_color = vec4(c, 1.0);  // linear: the sRGB colour buffer encodes it
}
"""
# The fine lines, folds and brows of `_FRAGMENT_SHADER`: only the program for triangles that can carry them has these.
_DETAIL_DECLARATIONS = """
uniform vec3 brow_tint;   // albedo factor of full brow paint
{wrinkles}
{brows}
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


def gl_wanted() -> bool:
    """False when BLENDTALK_RENDER=torch asks for the torch rasterizer."""
    return os.environ.get(RENDER_ENV, "").strip().lower() != "torch"


@functools.lru_cache(maxsize=None)
def log_fallback(why: str) -> None:
    """One log line per process (and reason) saying that the torch rasterizer draws instead."""
    logger.warning("OpenGL rendering unavailable (%s); drawing with the slower torch rasterizer", why)


@functools.lru_cache(maxsize=1)
def gl_context():
    """The process's headless OpenGL context (moderngl over EGL), created on first use; raises
    ImportError or another Exception where moderngl, EGL or an OpenGL 3.3 driver is missing."""
    import moderngl

    return moderngl.create_standalone_context(backend="egl", require=330)


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
    brow_tint: (3,) albedo factor of full brow paint (`face.brows`).
    detailed: optional (F,) bool, the triangles with a corner that can carry a fine line, a fold or
    a brow (a non-zero wrinkle amount or fold depth, or a brow gate, in any frame); the others are
    drawn by a program without those terms and their 9 interpolated values (the same pixels, for
    less work per pixel), each pass's plain triangles before its detailed ones. None: all detailed.
    """

    def __init__(self, triangles: np.ndarray, num_vertices: int, size: int, *, focal: float, distance: float, near: float, far: float,
                 ortho: bool, lights: np.ndarray, halfways: np.ndarray, intensities: np.ndarray, ambient: float,
                 back_light: float, background: np.ndarray, tie_bias: float, wrinkle: tuple[float, float, float] = (0.0, 1.0, 0.0),
                 brow_tint: np.ndarray = np.ones(3), detailed: np.ndarray | None = None):
        import moderngl

        self.ctx = ctx = gl_context()
        self.size = size
        self.background = tuple(float(c) / 255 for c in background) + (1.0,)
        triangles = np.ascontiguousarray(triangles, dtype=np.uint32)
        detailed = np.ones(len(triangles), bool) if detailed is None else np.asarray(detailed, bool)
        if detailed.shape != (len(triangles),):
            raise ValueError(f"detailed must have shape ({len(triangles)},), got {detailed.shape}")
        with _LOCK, ctx:
            uniforms = {"focal": focal, "distance": distance, "ortho": int(ortho),
                        "code_range": (near, far) if ortho else (1 / far, 1 / near),
                        "ambient": ambient, "back_light": back_light,
                        "srgb_steps": float(SRGB_STEPS), "wrinkle_shape": tuple(wrinkle),
                        "brow_tint": tuple(float(c) for c in brow_tint)}
            programs = {}
            for with_detail in set(detailed.tolist()):  # a program only for the kinds there are
                declarations = _DETAIL_DECLARATIONS.replace("{wrinkles}", wrinkle_glsl(float(wrinkle[1]))).replace("{brows}", brow_glsl())
                fragment = (_FRAGMENT_SHADER.replace("{lights}", str(len(intensities)))
                            .replace("{detail_declarations}", declarations if with_detail else "")
                            .replace("{detail}", _DETAIL if with_detail else ""))
                program = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=fragment)
                for name, value in uniforms.items():
                    if name in program:  # the plain program has no detail uniforms
                        program[name].value = value
                for name, value in (("light_dirs", lights), ("halfways", halfways), ("intensities", intensities)):
                    program[name].write(np.asarray(value, np.float32).tobytes())
                programs[with_detail] = program
            self.num_vertices = int(num_vertices)  # a vertex no triangle uses (a rig's stray point) still comes in
            self.vbo = ctx.buffer(reserve=self.num_vertices * ATTRIBUTES * 4, dynamic=True)
            # The plain program reads position, normal and material; the 9 detail floats are skipped.
            layouts = {True: [(self.vbo, "3f 3f 4f 4f 2f 3f", "in_pos", "in_normal", "in_material", "in_wrinkle", "in_fold", "in_brow")],
                       False: [(self.vbo, "3f 3f 4f 36x", "in_pos", "in_normal", "in_material")]}

            # Each pass draws the plain triangles, then the detailed ones, each kind in the given order:
            # only an exact depth tie between a plain and a detailed triangle (the earlier drawn wins
            # it) could come out otherwise than in one draw of all.
            self.arrays = []
            for with_detail in (False, True):
                part = triangles[detailed == with_detail]
                if len(part):
                    index = ctx.buffer(np.ascontiguousarray(part).tobytes())
                    self.arrays.append(ctx.vertex_array(programs[with_detail], layouts[with_detail], index_buffer=index, index_element_size=4))
            # One frame at a time: frames drawn side by side into a wider framebuffer were no faster
            # on llvmpipe and made a frame's pixels depend (by rounding) on its place in the batch.
            self.fbo = ctx.framebuffer(color_attachments=[ctx.texture((size, size), 4, internal_format=_GL_SRGB8_ALPHA8)],
                                       depth_attachment=ctx.depth_renderbuffer((size, size)))
            # Back faces lose depth ties to front faces (folds where they touch, e.g. eyelid corners):
            # they are drawn in a second pass, pushed back by `tie_bias` in units of the depth buffer's
            # step. Not through gl_FragDepth, which would turn off the early depth test.
            self.tie_units = float(tie_bias * (1 << _DEPTH_BITS))

    def __call__(self, attributes: np.ndarray) -> np.ndarray:
        """attributes (T, V, 19) float32: camera-space position (3), camera-space normal (3),
        linear albedo (3), sheen (1), wrinkle (6, `render.wrinkles`) and brow (3, `face.brows`) per vertex -> uint8 frames (T, size, size, 3)."""
        t_count, v_count, width = attributes.shape
        if v_count != self.num_vertices or width != ATTRIBUTES:
            raise ValueError(f"attributes must have shape (T, {self.num_vertices}, {ATTRIBUTES}), got {attributes.shape}")
        n = self.size
        out = np.empty((t_count, n, n, 3), np.uint8)
        attributes = np.ascontiguousarray(attributes, dtype=np.float32)
        with _LOCK, self.ctx:
            import moderngl

            ctx = self.ctx
            self.fbo.use()
            ctx.enable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
            ctx.front_face = "cw"  # screen y points down, so a triangle facing us winds clockwise
            for t in range(t_count):
                self.fbo.clear(*self.background, depth=1.0)  # already sRGB: cleared before encoding is on
                ctx.enable_direct(_GL_FRAMEBUFFER_SRGB)
                self.vbo.write(attributes[t])
                ctx.cull_face = "back"  # pass 1: surfaces facing the camera
                ctx.disable_direct(_GL_POLYGON_OFFSET_FILL)
                for array in self.arrays:
                    array.render(moderngl.TRIANGLES)
                ctx.cull_face = "front"  # pass 2: surfaces seen from behind, a tie further away
                ctx.polygon_offset = (0.0, self.tie_units)
                ctx.enable_direct(_GL_POLYGON_OFFSET_FILL)
                for array in self.arrays:
                    array.render(moderngl.TRIANGLES)
                # Read the stored sRGB bytes (with encoding on, GL would decode them to linear).
                # Rows come bottom-up, which the shader's flipped y turns into image order.
                ctx.disable_direct(_GL_FRAMEBUFFER_SRGB)
                self.fbo.read_into(out[t], components=3, alignment=1)
        return out

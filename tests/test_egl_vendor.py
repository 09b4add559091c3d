"""render/egl_vendor.py: NVIDIA's EGL driver registered with glvnd only where the system did not,
and the renderer's choice of OpenGL or the torch rasterizer per device (no GPU needed: both mocked)."""

import json

import pytest

from blendtalk.render import gl
from blendtalk.render.egl_vendor import FILES_ENV, FOLDERS_ENV, NVIDIA_EGL, prepare_nvidia_egl, vendor_files


def vendor(folder, name, library):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps({"file_format_version": "1.0.0", "ICD": {"library_path": library}}))
    return path


def test_registers_nvidia_ahead_of_what_the_system_has(tmp_path):
    mesa = vendor(tmp_path / "share", "50_mesa.json", "libEGL_mesa.so.0")
    env = {}
    asked = []
    value = prepare_nvidia_egl(env, [tmp_path / "etc", tmp_path / "share"], tmp_path / "cache",
                               lambda lib: asked.append(lib) or True)
    files = env[FILES_ENV].split(":")
    assert value == env[FILES_ENV] and asked == [NVIDIA_EGL] and files[1:] == [str(mesa)]
    written = json.loads(open(files[0]).read())
    assert written["ICD"]["library_path"] == NVIDIA_EGL and written["file_format_version"] == "1.0.0"
    again = {}  # a second process finds the file there and names it the same way
    assert prepare_nvidia_egl(again, [tmp_path / "share"], tmp_path / "cache", lambda lib: True) == value


@pytest.mark.parametrize("case", ["user set files", "user set folders", "system registered nvidia", "no nvidia driver"])
def test_leaves_egl_alone(tmp_path, case):
    folders = [tmp_path / "share"]
    vendor(folders[0], "50_mesa.json", "libEGL_mesa.so.0")
    env = {FILES_ENV: "/x.json"} if case == "user set files" else {FOLDERS_ENV: "/d"} if case == "user set folders" else {}
    if case == "system registered nvidia":
        vendor(folders[0], "10_nvidia.json", NVIDIA_EGL)
    before = dict(env)
    assert prepare_nvidia_egl(env, folders, tmp_path / "cache", lambda lib: case != "no nvidia driver") is None
    assert env == before and not (tmp_path / "cache").exists()


def test_unwritable_cache_leaves_egl_alone(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the cache folder would go: mkdir fails
    env = {}
    assert prepare_nvidia_egl(env, [tmp_path / "none"], blocker, lambda lib: True) is None and env == {}


def test_vendor_files_in_glvnd_order(tmp_path):
    b = vendor(tmp_path / "etc", "20_b.json", "b.so")
    a = vendor(tmp_path / "etc", "10_a.json", "a.so")
    c = vendor(tmp_path / "share", "05_c.json", "c.so")
    (tmp_path / "etc" / "notes.txt").write_text("")
    assert vendor_files([tmp_path / "etc", tmp_path / "missing", tmp_path / "share"]) == [a, b, c]


NVIDIA = lambda: (True, "NVIDIA H100 80GB HBM3/PCIe/SSE2")  # noqa: E731
LLVMPIPE = lambda: (True, "llvmpipe (LLVM 15.0.6, 256 bits)")  # noqa: E731
MISSING = lambda: (False, "ImportError: libEGL.so.1: cannot open shared object file")  # noqa: E731


@pytest.mark.parametrize("backend, device, supersample, status, expected", [
    ("auto", "cuda", 1, NVIDIA, True),  # a GPU driver on a GPU device
    ("auto", "cuda", 1, LLVMPIPE, False),  # llvmpipe is slower than the rasterizer on the GPU
    ("auto", "cpu", 1, LLVMPIPE, True),
    ("auto", "cpu", 1, NVIDIA, True),
    ("auto", "cuda", 1, MISSING, False),
    ("auto", "cuda", 2, NVIDIA, False),  # supersampling is the rasterizer's
    ("auto", "mps", 1, NVIDIA, False),
    ("torch", "cuda", 1, NVIDIA, False),
    ("gl", "cuda", 1, LLVMPIPE, True),  # asked for by name: any OpenGL
    ("gl", "cuda", 1, MISSING, False),
])
def test_choose_backend(backend, device, supersample, status, expected):
    use, why = gl.choose(backend, device, supersample, status)
    assert use is expected
    if not use and backend != "torch" and supersample == 1 and device != "mps":
        assert why and ("software rasterizer" in why if status is LLVMPIPE else "libEGL" in why)


def test_choose_never_asks_when_nothing_is_expected_of_opengl():
    def fail():
        raise AssertionError("gl_status was asked")

    assert gl.choose("torch", "cuda", 1, fail) == (False, None)
    assert gl.choose("auto", "cpu", 2, fail) == (False, None)


@pytest.mark.parametrize("name, hardware", [("NVIDIA H100 80GB HBM3/PCIe/SSE2", True), ("llvmpipe (LLVM 15.0.6, 256 bits)", False),
                                            ("softpipe", False), ("AMD Radeon RX 7900", True)])
def test_is_hardware(name, hardware):
    assert gl.is_hardware(name) is hardware

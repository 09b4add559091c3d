#!/usr/bin/env bash
# Builds .whl/, what an offline GPU host (Python 3.12, its own CUDA torch, no network) lacks to run the GPU tests
# and eval/gpu_bench.sh. The device tool carries at most 64 MiB together with the working tree (about 46 MiB):
#   cp312 wheels: moderngl, glcontext, cffi, pycparser, soundfile, soxr, tqdm, imageio-ffmpeg without its
#     ffmpeg, espeakng-loader with English's dictionary only (the GPU training test makes a small eSpeak
#     corpus), and pocketsphinx 5.0.4 (5.1.1 has no cp312 wheel) without its 27 MB word LM, so recognition
#     there falls back to allphone, with a warning;
#   tests/: pytest and hypothesis as requirements-dev.txt pins them, for a host without them;
#   glvnd/: glvnd's dispatch libraries from Debian (libEGL, libGL, libGLX, libOpenGL, libGLdispatch), through
#     which OpenGL reaches the NVIDIA driver on a host without them.
# No ffmpeg: the smallest static build (imageio-ffmpeg 0.5.1's ffmpeg 4.2.2) packs to 19 MB with xz -9e, over
# what is left, so eval/gpu_bench.sh times the mp4 only where the host has an ffmpeg (or .whl/ffmpeg.xz).
#     bash tools/gpu_carry.sh     # then the device tool's carry: [".whl"]
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl/glvnd
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 \
         manylinux1_x86_64 any; do platforms+=(--platform "$p"); done
fetch() { pip download -q --only-binary=:all: --python-version 3.12 "$@" 2>&1 | grep -v "is ignored" || true; }

slim() {  # slim WHEEL PATTERN: copy WHEEL into .whl/ without the members whose names match PATTERN (a regex)
  python -c '
import re, sys, zipfile
src, dst, pattern = sys.argv[1:]
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not re.match(pattern, item.filename):
            zout.writestr(item, zin.read(item.filename))
' "$1" ".whl/$(basename "$1")" "$2"
}

fetch --no-deps "${platforms[@]}" -d "$tmp/w" moderngl==5.13.0 glcontext cffi pycparser soundfile==0.14.0 \
    soxr==1.1.0 tqdm==4.70.1 pocketsphinx==5.0.4 imageio-ffmpeg==0.8.1 espeakng-loader==0.2.4
for w in "$tmp"/w/*.whl; do
  case $(basename "$w") in
    imageio_ffmpeg-*) slim "$w" 'imageio_ffmpeg/binaries/ffmpeg-' ;;
    pocketsphinx-*) slim "$w" 'pocketsphinx/model/en-us/en-us\.lm\.bin' ;;
    espeakng_loader-*) slim "$w" 'espeakng_loader/espeak-ng-data/(?!en_)[a-z]+_dict$' ;;
    *) cp "$w" .whl/ ;;
  esac
done
fetch "${platforms[@]}" -d .whl/tests $(grep -E '^(pytest|hypothesis)==' requirements-dev.txt)
(cd "$tmp" && apt-get download -q libegl1 libopengl0 libgl1 libglx0 libglvnd0 >/dev/null 2>&1 && for d in *.deb; do dpkg -x "$d" x; done)
for lib in libEGL.so.1 libGL.so.1 libGLX.so.0 libOpenGL.so.0 libGLdispatch.so.0; do
  cp -L "$tmp/x/usr/lib/x86_64-linux-gnu/$lib" .whl/glvnd/
done
du -sh .whl

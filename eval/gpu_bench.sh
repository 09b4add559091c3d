#!/usr/bin/env bash
# Issue #27's GPU measurements in one go, on a GPU host with no network (Python 3.12 with CUDA torch;
# what it lacks comes as cp312 wheels in .whl/, built by tools/gpu_carry.sh: without pocketsphinx's word LM
# recognition falls back to allphone, with a warning; an ffmpeg xz-packed as .whl/ffmpeg.xz is unpacked, and
# without an ffmpeg the mp4 is not timed). About 5 min;
# every result lands in $OUT (JSON, plus bench.log with the host and each step's output):
#     OUT=out bash eval/gpu_bench.sh
#     OUT=/tmp/dry DEVICE=cpu QUICK=1 SKIP_INSTALL=1 bash eval/gpu_bench.sh    # dry run of every step on a CPU
#   gpu_dfm.json           DFM at batch 1 (eager, CUDA graph) and batched (precisions, channels-last,
#                          torch.compile), deviations from float32, torch.profiler table, FLOPs/bytes vs peaks
#   gpu_pipeline.json      pipeline batched (audio -> 512 px frames in memory) and one 10 s clip -> frames / mp4
#   gpu_gl.json            one 10 s clip rendered by the torch rasterizer and by OpenGL (the GPU's driver
#                          where EGL reaches it), RGB and yuv420p, their difference; its encode rgb24/yuv420p
#                          into x264 and yuv420p into NVENC where this ffmpeg has it
#   gpu_pipeline_torch.json  gpu_pipeline.json's figures with BLENDTALK_RENDER=torch (the rasterizer), for comparison
#   gpu_clip_mp4.json      one 10 s clip to mp4 with x264 and with NVENC in process (PyNvVideoCodec, where its
#                          wheel is among .whl/*.whl), interleaved; their decoded frames compared; the front end profiled
#   live_latency.json      eval/live_latency.py on the device (24 s of speech at real pace)
#   gpu_graph_sparse.json  the DFM with its cuSPARSE map captured as a CUDA graph (last: a refused
#                          capture can spoil the process's CUDA context)
# OpenGL on the NVIDIA driver needs glvnd's dispatch libraries (libEGL.so.1, libGLdispatch.so.0,
# libOpenGL.so.0, libGL.so.1, libGLX.so.0); a host without them gets them from .whl/glvnd (1.6 MB, Debian's
# libegl1 libopengl0 libgl1 libglx0 libglvnd0). blendtalk registers NVIDIA's EGL vendor file itself
# where the host lacks one (blendtalk/render/egl_vendor.py).
# STEPS picks steps (default: all of dfm pipeline pipeline_torch gl clip_mp4 live graph_sparse).
set -uo pipefail
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
log="$OUT/bench.log"
if [ -z "${SKIP_INSTALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >>"$log" 2>&1 || { cat "$log"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
  if [ -f .whl/ffmpeg.xz ]; then  # imageio-ffmpeg's static binary, xz-packed to fit the 64 MiB carry
    python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.whl/ffmpeg.xz'), open('/tmp/ffmpeg', 'wb'))"
    chmod +x /tmp/ffmpeg && export IMAGEIO_FFMPEG_EXE=/tmp/ffmpeg
  fi
else
  export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD  # wheels installed beforehand stay in reach
fi
if [ -d .whl/glvnd ] && ! ldconfig -p | grep -q 'libEGL.so.1 '; then
  export LD_LIBRARY_PATH=$PWD/.whl/glvnd:${LD_LIBRARY_PATH:-}
  export GLCONTEXT_LINUX_LIBGL=$PWD/.whl/glvnd/libGL.so.1 GLCONTEXT_LINUX_LIBEGL=$PWD/.whl/glvnd/libEGL.so.1
fi
steps=" ${STEPS:-dfm pipeline pipeline_torch gl clip_mp4 live graph_sparse} "
want() { [[ "$steps" == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1
device=${DEVICE:-cuda}
quick=${QUICK:+--quick}
t0=$(date +%s)
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log its output, say how it ended
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit} s) ===" >>"$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  echo "$name: exit $? at $(( $(date +%s) - t0 )) s" | tee -a "$log"
}
{
  date -u; nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc; python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"
  python3 -c "import pocketsphinx, soundfile; print('pocketsphinx', pocketsphinx.__file__)"
  python3 -c "import imageio_ffmpeg; print('ffmpeg', imageio_ffmpeg.get_ffmpeg_exe())"
  python3 -c "from blendtalk.render import gl; print('OpenGL', gl.gl_status())"
  git log -1 --format='tree at %h %s'
} >>"$log" 2>&1
want dfm && step dfm 160 python3 eval/gpu_speed.py --device "$device" $quick --sections dfm --json "$OUT/gpu_dfm.json"
want pipeline && step pipeline 110 python3 eval/gpu_speed.py --device "$device" $quick --sections pipeline --repeats-pipeline 2 \
  --json "$OUT/gpu_pipeline.json"
want pipeline_torch && BLENDTALK_RENDER=torch step pipeline_torch 110 python3 eval/gpu_speed.py --device "$device" $quick \
  --sections pipeline --repeats-pipeline 2 --json "$OUT/gpu_pipeline_torch.json"
want gl && step gl 90 python3 eval/gpu_speed.py --device "$device" $quick --sections gl --json "$OUT/gpu_gl.json"
want clip_mp4 && step clip_mp4 240 python3 eval/clip_mp4.py --device "$device" $quick --json "$OUT/gpu_clip_mp4.json"
want live && step live 90 python3 eval/live_latency.py --device "$device" --minutes "${LIVE_MINUTES:-0.4}" --json "$OUT/live_latency.json"
if [ "$device" != cpu ] && want graph_sparse; then
  step graph_sparse 30 python3 eval/gpu_speed.py --device "$device" --sections graph_sparse --json "$OUT/gpu_graph_sparse.json"
fi
grep -E "frames/s|clip_to|pipeline,|p95|exit|Error|OpenGL|encode|MAD" "$log" | tail -50
ls -la "$OUT"

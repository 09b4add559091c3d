"""Speed and size of the whole pipeline, stage by stage (issue 9; compare with the paper's Table 2).

    python eval/benchmark.py --device cuda --seconds 10 --repeats 5 --json bench.json
    python eval/benchmark.py --device cpu --threads 2 --seconds 2 --repeats 3 --clips 2

Measures, after --warmup untimed calls, --repeats timed calls of each stage (median, min..max, IQR):
* frames/s of the DFM alone (both encoders + decoder, paper eq. 13) at batch 1 (streaming: one
  frame per call, as a live system runs) and batched (the whole clip; --clips clips at once);
* the speech model: FaceFormer's autoregressive generation (one frame per decoder step) for one
  clip and for --clips clips at once. Without a speech checkpoint (none ships yet) a FaceFormer with
  the default config and random weights stands in: its cost is the architecture's, not a result;
* the whole pipeline (audio front end + speech model + DFM) at batch 1 and batched;
* the render (--size px) and the H.264/AAC encode separately, and the per-stage seconds of
  "--seconds of speech -> finished mp4";
* peak memory (CUDA: torch.cuda.max_memory_allocated per stage; CPU: the process's peak RSS so
  far, from resource.getrusage) and the checkpoints' weight sizes.

The clip is the shipped ARCTIC utterance repeated to --seconds, with its labelled phones. The audio
front end is measured with what imports: decoding (blendtalk.speech.audio.load_audio, or the stdlib wave
reader without soundfile), phone recognition (pocketsphinx; else "n/a" and the labelled phones
are used), and the phonetic features (blendtalk.speech.audio.log_mel needs librosa for its mel filter
bank; without it a numpy copy of log_mel below gives the same features).
"""

import argparse
import math
import os
import platform
import resource
import tempfile
import time
import wave
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from blendtalk.speech.audio import (
    HOP_LENGTH, N_FFT, _power_spectrogram, mel_floor, num_frames,
)
from blendtalk.constants import ASSETS_DIR, FPS, SAMPLE_RATE
from blendtalk.speech.features import PHONETIC_MELS, phonetic_inputs
from blendtalk.speech.phones import Phone, cover_phones, phones_to_frames, read_phone_labels
from blendtalk.face.rig import load_rig
from blendtalk.evaluation.reports import JSON_FILE, write_report

ARCTIC = ASSETS_DIR / "audio" / "arctic_a0009"
PAPER_FPS = 165  # frames/s of FaceFormer + DFM on an RTX 3090 (paper, Table 2)
PAPER_DFM_MB = 17.89  # MB of DFM weights (paper, section 4.3)
MB = 1e6  # bytes; sizes as file managers show them


# ---- inputs ----

def arctic_clip(seconds: float) -> tuple[np.ndarray, list[Phone]]:
    """The ARCTIC utterance repeated and cut to `seconds`: audio (S,) float32 at 16 kHz and its phones."""
    audio = read_wav(ARCTIC.with_suffix(".wav"))
    phones = read_phone_labels(ARCTIC.with_suffix(".phones.txt"))
    length = round(seconds * SAMPLE_RATE)
    copies = math.ceil(length / len(audio))
    clip_s = len(audio) / SAMPLE_RATE
    tiled = [Phone(p.symbol, p.start + k * clip_s, min(p.end, clip_s) + k * clip_s) for k in range(copies) for p in phones]
    return np.tile(audio, copies)[:length], cover_phones(tiled, length / SAMPLE_RATE)


def read_wav(path: Path) -> np.ndarray:
    """16-bit PCM mono wav at 16 kHz -> float32 (S,), with the standard library only."""
    with wave.open(str(path), "rb") as w:
        if (w.getsampwidth(), w.getnchannels(), w.getframerate()) != (2, 1, SAMPLE_RATE):
            raise ValueError(f"{path} must be 16-bit mono at {SAMPLE_RATE} Hz for the stdlib reader")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """float (S,) in [-1, 1] -> 16-bit PCM mono wav, with the standard library only."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).round().astype("<i2").tobytes())


def mel_filterbank(n_mels: int, fmin: float = 20.0, fmax: float = SAMPLE_RATE / 2) -> np.ndarray:
    """Slaney mel filters (n_mels, N_FFT // 2 + 1), as librosa.filters.mel(sr=16000, n_fft=512, ...) makes them."""
    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        logstep = math.log(6.4) / 27.0
        return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / logstep, f * 3.0 / 200.0)

    def mel_to_hz(m):
        logstep = math.log(6.4) / 27.0
        return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), m * 200.0 / 3.0)

    freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # (n_mels + 2,) Hz
    ramps = edges[:, None] - freqs[None]  # (n_mels + 2, N_FFT // 2 + 1)
    widths = np.diff(edges)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]  # area-normalised
    return weights.astype(np.float32)


def numpy_log_mel(audio: np.ndarray, n_mels: int = PHONETIC_MELS) -> np.ndarray:
    """blendtalk.speech.audio.log_mel without librosa: (S,) -> (T, n_mels), the same pooling onto motion frames."""
    mel = (mel_filterbank(n_mels) @ _power_spectrogram(audio)).T  # (F, n_mels)
    t = num_frames(audio.shape[0])
    starts = np.minimum(-(-np.arange(t, dtype=np.int64) * SAMPLE_RATE // (FPS * HOP_LENGTH)), mel.shape[0] - 1)
    ends = np.maximum(np.append(starts[1:], mel.shape[0]), starts + 1)
    sums = np.add.reduceat(mel, starts, axis=0)
    sums[-1] = mel[starts[-1]:].sum(axis=0)
    return np.log(sums / (ends - starts)[:, None] + mel_floor(float(np.mean(np.square(audio, dtype=np.float64))))).astype(np.float32)


def missing(module: str) -> str | None:
    """None when `module` imports, else why not (for the report)."""
    try:
        __import__(module)
        return None
    except Exception as err:  # ImportError, or a native library that fails to load
        return f"{module} missing ({type(err).__name__})"


# ---- timing ----

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # Linux reports kB


def measure(fn, frames: int, device: torch.device, warmup: int, repeats: int) -> dict:
    """Run fn warmup + repeats times; seconds per call, frames/s and peak memory of this stage."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    t = np.array(times)
    q1, q3 = np.percentile(t, [25, 75])
    med = float(np.median(t))
    return {"frames": frames, "median_s": med, "min_s": float(t.min()), "max_s": float(t.max()),
            "iqr_s": float(q3 - q1), "fps": frames / med, "fps_min": frames / float(t.max()),
            "fps_max": frames / float(t.min()), "ms_per_frame": 1e3 * med / frames,
            "peak_mb": peak_memory_mb(device), "times_s": times}


@contextmanager
def stdlib_wav_writer():
    """write_video writes its temporary wav with soundfile; without it, write 16-bit PCM with `wave`."""
    if missing("soundfile") is None:
        yield None
        return
    from blendtalk.render import video

    with mock.patch.object(video, "_write_wav", write_wav):
        yield "16-bit wav via the stdlib (soundfile missing)"


# ---- models ----

def speech_model_or_random(folder: Path | None, rig, device, seed: int):
    """(FaceFormer, description, checkpoint folder or None): a checkpoint when one is found, else the
    default config with random weights."""
    from blendtalk.models.faceformer import FaceFormer, FaceFormerConfig, load_speech_model

    if folder is not None and (folder / "config.json").is_file():
        return load_speech_model(folder, device), f"FaceFormer checkpoint {folder}", folder
    torch.manual_seed(seed)
    model = FaceFormer(FaceFormerConfig(num_vertices=rig.num_vertices)).to(device).eval()
    with torch.no_grad():  # the zero-initialised motion layers would make every frame the template
        for layer in (model.motion_encoder, model.motion_decoder):
            layer.weight.normal_(0.0, 1e-3)
    return model, "FaceFormer, default config, random weights (timing only: no speech checkpoint yet)", None


def wav2vec2_speech_model(like, device, seed: int):
    """FaceFormer shaped like `like` (a FaceFormerConfig) but with the wav2vec2-base front end
    (Wav2Vec2Config's defaults: 12 layers, 768 wide, 94 M parameters), randomly initialised: its
    speed is the pretrained model's (no weights are offline), its output is not speech."""
    from dataclasses import replace

    from blendtalk.models.audio_encoders import AudioEncoderConfig
    from blendtalk.models.faceformer import FaceFormer

    torch.manual_seed(seed)
    return FaceFormer(replace(like, encoder=AudioEncoderConfig(kind="wav2vec2"))).to(device).eval()


def checkpoint_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / MB


# ---- the benchmark ----

@dataclass
class Bench:
    """What every stage of one benchmark run shares: the arguments, the clip's length, the rows and notes."""

    args: argparse.Namespace
    device: torch.device
    t: int  # frames of the clip
    rows: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def stage(self, key, label, batch, fn, frames) -> dict:
        row = measure(fn, frames, self.device, self.args.warmup, self.args.repeats)
        self.rows[key] = {"stage": label, "batch": batch, **row}
        print(f"  {label:<44} {batch:<22} {row['fps']:10.1f} frames/s  ({row['median_s'] * 1e3:.1f} ms)", flush=True)
        return self.rows[key]


def front_end(bench: Bench, audio: np.ndarray, phones: list[Phone], wav: Path) -> tuple[np.ndarray, float | None, float]:
    """Decode, phones, features: -> the phonetic features (T, F), the numpy log-mel's largest gap to
    blendtalk's (None when librosa is missing) and the front end's median seconds."""
    t, device, rows, notes = bench.t, bench.device, bench.rows, bench.notes
    if missing("soundfile") is None:
        from blendtalk.speech.audio import load_audio

        bench.stage("load", "audio: decode wav (load_audio)", "clip", lambda: load_audio(wav), t)
    else:
        bench.stage("load", "audio: decode wav (stdlib wave)", "clip", lambda: read_wav(wav), t)
        notes.append("audio decoded with the stdlib wave reader (soundfile missing)")
    why_phones = missing("pocketsphinx")
    if why_phones is None:
        from blendtalk.speech.phonetics import PhoneAligner, default_phone_workers

        aligner = PhoneAligner()
        bench.stage("phones", "audio: phone recognition (pocketsphinx)", "clip", lambda: aligner.recognize(audio), t)
        workers = default_phone_workers(busy_cores=int(device.type == "cuda")) if bench.args.phone_workers is None else bench.args.phone_workers
        if workers > 1:  # as the pipeline runs it: pieces of >= 2 s in worker processes
            pool = PhoneAligner(workers)
            bench.stage("phones_parallel", f"audio: phone recognition, {workers} worker processes", "clip",
                        lambda: pool.recognize(audio), t)
            pool.close()
    else:
        rows["phones"] = {"stage": "audio: phone recognition", "batch": "clip", "na": f"n/a ({why_phones})"}
        notes.append(f"phone recognition not measured ({why_phones}); the labelled ARCTIC phones are used")
    if missing("librosa") is None:
        from blendtalk.speech.features import features_from_phones

        feats = features_from_phones(audio, phones, "aligned").features
        fallback_gap = float(np.abs(numpy_log_mel(audio) - feats[:, -PHONETIC_MELS:]).max())
        bench.stage("features", "audio: phonetic features (log_mel)", "clip",
                    lambda: features_from_phones(audio, phones, "aligned"), t)
    else:
        fallback_gap = None
        feats = phonetic_inputs(phones_to_frames(phones, t), numpy_log_mel(audio))
        bench.stage("features", "audio: phonetic features (numpy log-mel)", "clip",
                    lambda: phonetic_inputs(phones_to_frames(phones, t), numpy_log_mel(audio)), t)
        notes.append("log-mel from the numpy copy of blendtalk.speech.audio.log_mel (librosa missing)")
    phones_key = "phones_parallel" if "phones_parallel" in rows else "phones"  # what the pipeline would use
    front_s = sum(rows[k]["median_s"] for k in ("load", phones_key, "features") if "median_s" in rows.get(k, {}))
    return feats, fallback_gap, front_s


def speech_stages(bench: Bench, rig, audio: np.ndarray, phones: list[Phone], feats: np.ndarray):
    """The speech model (streaming and batched, and the wav2vec2 front end unless skipped) and the
    procedural driver: -> (model, its description, its checkpoint folder or None, d_s (T, V, 3))."""
    args, device, t, b = bench.args, bench.device, bench.t, bench.args.clips
    speech_dir = Path(args.speech) if args.speech else ASSETS_DIR / "speech"
    model, speech_desc, speech_ckpt = speech_model_or_random(speech_dir, rig, device, args.seed)
    n = model.config.num_speakers
    if model.config.encoder.kind == "phonetic":
        x1 = torch.from_numpy(feats)[None].to(device)  # (1, T, F)
    else:
        x1 = torch.from_numpy(audio)[None].to(device)  # (1, S)
    xb = x1.expand(b, *x1.shape[1:]).contiguous()
    style1, styleb = torch.full((1, n), 1.0 / n, device=device), torch.full((b, n), 1.0 / n, device=device)
    bench.stage("speech_1", "speech model (autoregressive)", "1 (streaming)", lambda: model.generate(x1, t, style1), t)
    bench.stage("speech_b", "speech model (autoregressive)", f"{b} clips", lambda: model.generate(xb, t, styleb), b * t)
    with torch.inference_mode():
        d_s = model.generate(x1, t, style1)[0]  # (T, V, 3) on device
    if not args.no_wav2vec2:  # the paper's front end: raw audio in, no phone recognition on the CPU
        w2v = wav2vec2_speech_model(model.config, device, args.seed)
        audio1 = torch.from_numpy(audio)[None].to(device)  # (1, S)
        bench.stage("speech_w2v", "speech model, wav2vec2-base front end (random weights)", "1 (streaming)",
                    lambda: w2v.generate(audio1, t, style1), t)
        del w2v
    if missing("scipy") is None:
        from blendtalk.speech.visemes import VisemeDriver

        driver = VisemeDriver(rig)
        bench.stage("visemes", "procedural viseme driver (CPU, numpy)", "clip", lambda: driver(phones, t), t)
        d_s = torch.from_numpy(driver(phones, t)[1]).to(device)  # a real mouth motion for the DFM
    return model, speech_desc, speech_ckpt, d_s


def dfm_stages(bench: Bench, rig, d_s: torch.Tensor):
    """The expression input and the DFM, one frame at a time, per clip and batched: -> (dfm, d_e (T, V, 3))."""
    from blendtalk.models.dfm import load_dfm
    from blendtalk.pipeline import expression_weights
    from blendtalk.request import Expression

    t, b = bench.t, bench.args.clips
    expr = Expression("happy", 0.8, timeline=None)
    bench.stage("expression", "expression input (emotion + blinks)", "clip",
                lambda: rig.displacement(expression_weights(expr, t, names=rig.blendshape_names)), t)
    d_e = torch.from_numpy(rig.displacement(expression_weights(expr, t, names=rig.blendshape_names)).astype(np.float32))
    d_e = d_e.to(bench.device)
    dfm = load_dfm(Path(bench.args.dfm), rig, bench.device)

    def dfm_stream():
        for i in range(t):
            dfm.fuse(d_s[i : i + 1], d_e[i : i + 1])

    bench.stage("dfm_1", "DFM (both encoders + decoder)", "1 (streaming)", dfm_stream, t)
    bench.stage("dfm_clip", "DFM (both encoders + decoder)", f"clip ({t} frames)", lambda: dfm.fuse(d_s, d_e), t)
    ds_b, de_b = d_s.repeat(b, 1, 1), d_e.repeat(b, 1, 1)  # (B*T, V, 3)
    bench.stage("dfm_b", "DFM (both encoders + decoder)", f"{b} clips ({b * t} frames)", lambda: dfm.fuse(ds_b, de_b), b * t)
    if bench.device.type == "cuda":
        dfm_on_cuda(bench, dfm, d_s, d_e, ds_b, de_b)
    return dfm, d_e


def dfm_on_cuda(bench: Bench, dfm, d_s, d_e, ds_b, de_b) -> None:
    """The DFM in bfloat16 convolutions (the sparse geometric map and the decoder stay float32), and compiled."""
    t, b, notes = bench.t, bench.args.clips, bench.notes

    def dfm_bf16(ds, de):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return dfm.fuse(ds, de)

    bench.stage("dfm_b_bf16", "DFM, bfloat16 autocast", f"{b} clips ({b * t} frames)", lambda: dfm_bf16(ds_b, de_b), b * t)
    err = (dfm_bf16(d_s, d_e).float() - dfm.fuse(d_s, d_e)).norm(dim=-1)  # (T, V) metres
    notes.append(f"bfloat16 DFM vs float32: mean vertex difference {err.mean().item() * 1e3:.4f} mm, max {err.max().item() * 1e3:.4f} mm")
    # torch.compile fuses each InstanceNorm + ReLU into its convolution's epilogue (the encoders'
    # memory traffic is most of the DFM's time); one compile per input shape.
    compiled = torch.compile(dfm.fuse)
    start = time.perf_counter()
    try:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            compiled(ds_b, de_b)
    except Exception as err_:  # no Triton / compiler on this machine: report, keep the other rows
        notes.append(f"torch.compile not measured ({type(err_).__name__}: {str(err_)[:120]})")
        return
    notes.append(f"torch.compile of DFM.fuse: {time.perf_counter() - start:.1f} s once per input shape")

    def dfm_compiled(ds, de):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return compiled(ds, de)

    bench.stage("dfm_b_compiled", "DFM, bfloat16 + torch.compile", f"{b} clips ({b * t} frames)",
                lambda: dfm_compiled(ds_b, de_b), b * t)


def render_stages(bench: Bench, rig, vertices: np.ndarray, audio: np.ndarray, scratch: Path) -> None:
    """Render vertices (T, V, 3) in batches of 60, as Pipeline.render_frames does, and encode the mp4."""
    from blendtalk.render.renderer import Renderer, RenderConfig

    args, device, t = bench.args, bench.device, bench.t
    sync(device)
    start = time.perf_counter()
    renderer = Renderer.for_rig(rig, RenderConfig(size=args.size), device=device)
    sync(device)
    build_s = time.perf_counter() - start
    frames_out = {}

    def render_all():
        frames_out["v"] = np.concatenate([renderer(vertices[i : i + 60]) for i in range(0, t, 60)])

    bench.stage("render", f"render {args.size}x{args.size}", "clip (batches of 60)", render_all, t)
    bench.rows["render"]["build_s"] = build_s
    why_encode = missing("imageio_ffmpeg")
    if why_encode is None:
        from blendtalk.render.video import write_video

        mp4 = scratch / "clip.mp4"
        with stdlib_wav_writer() as how:
            bench.stage("encode", f"encode {args.size}x{args.size} H.264 + AAC", "clip",
                        lambda: write_video(mp4, frames_out["v"], FPS, audio, SAMPLE_RATE), t)
        if how:
            bench.notes.append(f"encode: {how}")
    else:
        bench.rows["encode"] = {"stage": "encode H.264 + AAC", "batch": "clip", "na": f"n/a ({why_encode})"}


def run(args) -> dict:
    device = torch.device(args.device)
    rig = load_rig()
    audio, phones = arctic_clip(args.seconds)
    t = num_frames(len(audio))
    b = args.clips
    bench = Bench(args, device, t)
    rows, notes = bench.rows, bench.notes
    print(f"{args.seconds:g} s of speech = {t} frames at {FPS} fps on {device}; {args.clips} clips when batched", flush=True)
    with tempfile.TemporaryDirectory(prefix="blendtalk-bench-") as scratch:
        wav = Path(scratch) / "speech.wav"
        write_wav(wav, audio)
        feats, fallback_gap, front_s = front_end(bench, audio, phones, wav)
        model, speech_desc, speech_ckpt, d_s = speech_stages(bench, rig, audio, phones, feats)
        dfm, d_e = dfm_stages(bench, rig, d_s)
        # The pipeline = front end + speech model + DFM, from the stage medians.
        for key, label, frames, secs in (
            ("pipeline_1", "1 (streaming)", t, front_s + rows["speech_1"]["median_s"] + rows["dfm_1"]["median_s"]),
            ("pipeline_b", f"{b} clips", b * t, b * front_s + rows["speech_b"]["median_s"] + rows["dfm_b"]["median_s"]),
        ):
            rows[key] = {"stage": "pipeline: front end + speech model + DFM", "batch": label, "frames": frames,
                         "median_s": secs, "fps": frames / secs, "ms_per_frame": 1e3 * secs / frames,
                         "from": "sum of the stage medians"}
        with torch.inference_mode():
            vertices = (torch.as_tensor(rig.vertices, device=device) + dfm.fuse(d_s, d_e)).cpu().numpy()  # (T, V, 3)
        render_stages(bench, rig, vertices, audio, Path(scratch))

    # Seconds of speech -> finished mp4, stage by stage (medians).
    e2e = {"audio front end": front_s, "speech model": rows["speech_1"]["median_s"],
           "expression": rows["expression"]["median_s"], "dfm": rows["dfm_clip"]["median_s"],
           "render": rows["render"]["median_s"], "encode": rows.get("encode", {}).get("median_s")}
    e2e["total"] = sum(v for v in e2e.values() if v is not None)
    # Audio file -> speech deformation (T, V, 3), the speech model's own speed target.
    to_speech = {"phonetic (shipped)": front_s + rows["speech_1"]["median_s"]}
    if "speech_w2v" in rows:
        to_speech["wav2vec2-base"] = rows["load"]["median_s"] + rows["speech_w2v"]["median_s"]

    dfm_mb = checkpoint_mb(Path(args.dfm))
    weights = {"dfm": dfm_mb, "dfm_paper": PAPER_DFM_MB,
               "speech_model": checkpoint_mb(speech_ckpt) if speech_ckpt is not None else None,
               "speech_model_params_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / MB}
    if fallback_gap is not None:
        notes.append(f"numpy log-mel vs blendtalk.speech.audio.log_mel: max |difference| {fallback_gap:.2e}")
    host = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    return {
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "host": host, "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "seconds": len(audio) / SAMPLE_RATE, "frames": t, "clips": b, "warmup": args.warmup, "repeats": args.repeats,
        "size": args.size, "speech_model": speech_desc, "dfm": str(args.dfm), "notes": notes, "weights_mb": weights,
        "rows": rows, "seconds_to_mp4": e2e, "audio_to_speech_s": to_speech, "paper": {"fps": PAPER_FPS, "gpu": "RTX 3090", "dfm_mb": PAPER_DFM_MB},
    }


def markdown(report: dict) -> str:
    mem = "peak CUDA MB" if report["device"].startswith("cuda") else "peak RSS MB (process)"
    lines = [f"### blendtalk speed on {report['gpu'] or report['host']} ({report['device']}, torch {report['torch']}, "
             f"{report['threads']} threads)", "",
             f"{report['seconds']:g} s of speech = {report['frames']} frames; median of {report['repeats']} runs after "
             f"{report['warmup']} warm-up; speech model: {report['speech_model']}.", "",
             f"| stage | batch | frames/s (median) | min..max | ms/frame | {mem} |", "|---|---|---|---|---|---|"]
    for row in report["rows"].values():
        if "na" in row:
            lines.append(f"| {row['stage']} | {row['batch']} | {row['na']} | | | |")
            continue
        spread = f"{row['fps_min']:.1f}..{row['fps_max']:.1f}" if "fps_min" in row else row.get("from", "")
        peak = f"{row['peak_mb']:.0f}" if "peak_mb" in row else ""
        lines.append(f"| {row['stage']} | {row['batch']} | {row['fps']:.1f} | {spread} | {row['ms_per_frame']:.2f} | {peak} |")
    p = report["paper"]
    lines += ["", f"Paper, Table 2: FaceFormer + DFM at over {p['fps']} frames/s on an {p['gpu']}.", "",
              f"Weights: DFM {report['weights_mb']['dfm']:.1f} MB (paper: {p['dfm_mb']} MB); speech model "
              + (f"{report['weights_mb']['speech_model']:.1f} MB" if report["weights_mb"]["speech_model"] is not None
                 else f"no checkpoint ({report['weights_mb']['speech_model_params_mb']:.1f} MB of float32 parameters)"),
              "", f"| {report['seconds']:g} s of speech -> mp4 at {report['size']}x{report['size']} | seconds (median) | share |",
              "|---|---|---|"]
    e2e = report["seconds_to_mp4"]
    total = e2e["total"]
    for name, secs in e2e.items():
        if name == "total":
            continue
        if secs is None:
            lines.append(f"| {name} | n/a | |")
        else:
            lines.append(f"| {name} | {secs:.3f} | {100 * secs / total:.0f}% |")
    lines.append(f"| **total** | **{e2e['total']:.3f}** | {e2e['total'] / report['seconds']:.2f}x real time |")
    lines.append(f"\nRenderer build (once): {report['rows']['render']['build_s']:.2f} s.")
    lines += ["", f"| {report['seconds']:g} s audio file -> speech deformation | seconds (median) | real time |", "|---|---|---|"]
    lines += [f"| {name} front end | {secs:.3f} | {report['seconds'] / secs:.0f}x |"
              for name, secs in report.get("audio_to_speech_s", {}).items()]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:N]")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the speech clip")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per stage")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per stage before timing")
    parser.add_argument("--clips", type=int, default=8, help="clips processed at once in the batched rows")
    parser.add_argument("--size", type=int, default=512, help="rendered frame side, px")
    parser.add_argument("--dfm", default=str(ASSETS_DIR / "dfm"), help="DFM checkpoint folder")
    parser.add_argument("--speech", default=None, help="speech checkpoint folder (default: assets/speech if present, "
                        "else a random FaceFormer for timing)")
    parser.add_argument("--phone-workers", type=int, default=None,
                        help="also time recognition in this many processes (default: the pipeline's choice for the device)")
    parser.add_argument("--no-wav2vec2", action="store_true",
                        help="skip timing the speech model with a (random) wav2vec2-base front end")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random stand-in speech model")
    parser.add_argument("--json", type=JSON_FILE, default=None, help="also write the results here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.clips < 1 or not 0.5 <= args.seconds <= 120:
        parser.error("need --repeats >= 1, --warmup >= 0, --clips >= 1 and 0.5 <= --seconds <= 120")
    if args.phone_workers is not None and args.phone_workers < 0:
        parser.error("--phone-workers must be at least 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # a script may; the package never sets global state
    from blendtalk.models.checkpoint import pick_device

    try:
        pick_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    report = run(args)
    table = markdown(report)
    print("\n" + table)
    if args.json is not None:
        write_report(args.json, report)
        print(f"wrote {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(table + "\n")
    return report


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))

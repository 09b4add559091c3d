"""Render the clips of a perceptual study and write its manifest (paper sec. 4.4).

    python eval/study/make_clips.py --audio a.wav b.wav --emotions happy sad --participants 24 --out studies/s1 \\
        --checkpoint no_sparsity=runs/dfm_nosparse --checkpoint no_laplacian=runs/dfm_nolap \\
        --checkpoint no_geometric_map=runs/dfm_flat
    python eval/study/make_clips.py ... --dry-run              # the manifest only, nothing rendered
    python eval/study/make_clips.py --out studies/s1 --resume  # render the clips still missing
    python eval/study/make_clips.py ... --renderer mypkg.render:render_clip

The study folder is self-contained (copy it to the machine that runs rate.py):
manifest.json, audio/<stimulus>.<ext> (copies of the inputs), clips/<stimulus>_<method>.mp4,
refs/<emotion>.<ext> (optional exemplar videos). The design and the manifest schema are in
blendtalk/evaluation/study.py and eval/study/README.md.

A renderer is any callable render_clip(audio_path, emotion, method, out_path) that writes one
video with the audio muxed in. The default, "pipeline", uses blendtalk.pipeline and blendtalk.render.video.
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

from blendtalk.evaluation.study import (
    ASPECTS, LAYOUTS, METHODS, REFERENCE, Study, StudyError, build_study, make_stimuli)

RenderClip = Callable[[Path, str, str, Path], None]  # (audio_path, emotion, method, out_path) -> writes out_path
MANIFEST = "manifest.json"
# Study method -> the `method` argument of Pipeline.animate. The ablations are the full method run on
# their own DFM checkpoint (they differ in training, not in inference).
PIPELINE_METHODS = {"ours": "ours", "no_sparsity": "ours", "no_laplacian": "ours", "no_geometric_map": "ours",
                    "interpolation": "interpolation", "speech_only": "speech_only"}
ABLATIONS = ("no_sparsity", "no_laplacian", "no_geometric_map")


class RendererUnavailable(RuntimeError):
    """The renderer asked for cannot run in this checkout; the message says what to do."""


def pipeline_renderer(methods: Sequence[str] = METHODS, checkpoints: Mapping[str, str | Path] | None = None,
                      device: str | None = None, intensity: float = 1.0, size: int = 512) -> RenderClip:
    """The default renderer: blendtalk.pipeline.Pipeline (one per DFM checkpoint, loaded lazily) and
    blendtalk.render.video.write_video. checkpoints: method -> DFM checkpoint folder; "ours" is the full
    model (default: the pipeline's own), each ablation in `methods` needs its own."""
    checkpoints = {k: str(v) for k, v in (checkpoints or {}).items()}
    from blendtalk.pipeline import Pipeline

    unknown = [m for m in methods if m not in PIPELINE_METHODS]
    need = [m for m in methods if m in ABLATIONS and m not in checkpoints]
    if unknown or need:
        raise StudyError(f"the pipeline renderer knows {tuple(PIPELINE_METHODS)} (unknown: {unknown}); each ablation "
                         f"needs its DFM checkpoint: pass --checkpoint NAME=FOLDER for {need}")
    pipelines = {}

    def render_clip(audio_path: Path, emotion: str, method: str, out_path: Path) -> None:
        folder = checkpoints.get(method, checkpoints.get("ours"))
        if folder not in pipelines:
            pipelines[folder] = Pipeline.from_pretrained(dfm=folder, device=device)
        animation = pipelines[folder].animate(str(audio_path), emotion=emotion, intensity=intensity,
                                              method=PIPELINE_METHODS[method])
        pipelines[folder].save_video(animation, out_path, size=size)

    return render_clip


RENDERERS = {"pipeline": pipeline_renderer}  # name -> factory(methods, checkpoints, device, intensity)


def resolve_renderer(spec: str, **options) -> RenderClip:
    """A registered renderer name (RENDERERS, built with `options`) or "module:function", a
    render_clip callable imported as is."""
    if spec in RENDERERS:
        return RENDERERS[spec](**options)
    module, _, name = spec.partition(":")
    if not module or not name:
        raise StudyError(f"--renderer must be one of {tuple(RENDERERS)} or module:function, got {spec!r}")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise StudyError(f"{spec} is not a callable render_clip(audio_path, emotion, method, out_path)")
    return fn


def render_clips(study: Study, root: Path, render_clip: RenderClip, progress: bool = True) -> list[str]:
    """Render every clip of `study` whose file under `root` is missing; returns the clip ids rendered.
    Each clip is written to a .partial file first, so an interrupted run never leaves a clip that
    looks finished."""
    from tqdm import tqdm

    todo = [c for c in study.clips if not (root / c.path).is_file()]
    done = []
    for clip in tqdm(todo, desc="rendering clips", unit="clip", disable=not progress):
        stimulus = study.stimulus_by_id[clip.stimulus]
        out = root / clip.path
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.stem + ".partial" + out.suffix)
        render_clip(root / stimulus.audio, stimulus.emotion, clip.method, partial)
        if not partial.is_file() or partial.stat().st_size == 0:
            raise RuntimeError(f"the renderer wrote nothing to {partial} for {clip.stimulus} / {clip.method}")
        os.replace(partial, out)
        done.append(clip.id)
    return done


def create_study(out: Path, audio: Sequence[Path], emotions: Sequence[str], n_participants: int,
                 methods: Sequence[str] = METHODS, layout: str = "panel", cross: bool = False, seed: int = 0,
                 aspects: Sequence[str] = ASPECTS, secret_ids: bool = True, name: str | None = None,
                 references: Mapping[str, Path] | None = None, method_info: dict | None = None) -> Study:
    """Copy the inputs into `out`, build the balanced design and write out/manifest.json (no rendering)."""
    out = Path(out)
    if (out / MANIFEST).exists():
        raise StudyError(f"{out / MANIFEST} exists; pass --resume to render its missing clips, or pick a new --out")
    for a in audio:
        if not Path(a).is_file():
            raise StudyError(f"audio file not found: {a}")
    stimuli = make_stimuli([str(a) for a in audio], emotions, cross)
    references = {k: Path(v) for k, v in (references or {}).items()}
    for emotion, video in references.items():
        if not video.is_file():
            raise StudyError(f"reference video for {emotion} not found: {video}")
    (out / "audio").mkdir(parents=True, exist_ok=True)
    copied = []
    for s in stimuli:
        src = Path(s.audio)
        dst = f"audio/{s.id}{src.suffix.lower()}"
        shutil.copy2(src, out / dst)
        ref = None
        if s.emotion in references:
            ref = f"refs/{s.emotion}{references[s.emotion].suffix.lower()}"
            (out / "refs").mkdir(exist_ok=True)
            shutil.copy2(references[s.emotion], out / ref)
        copied.append(type(s)(s.id, dst, s.emotion, ref))
    ids = [f"P{i + 1:02d}-{secrets.token_hex(4)}" if secret_ids else f"P{i + 1:02d}" for i in range(n_participants)]
    study = build_study(copied, n_participants, methods, layout, REFERENCE, aspects, seed, ids,
                        name=name or out.name, method_info=method_info)
    study.save(out / MANIFEST)
    return study


def _pairs(specs: Sequence[str], flag: str, parser) -> dict[str, str]:
    out = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key or not value:
            parser.error(f"{flag} takes NAME=VALUE, got {spec!r}")
        out[key] = value
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="study folder (created)")
    p.add_argument("--audio", type=Path, nargs="+", help="speech files, one stimulus each (or crossed)")
    p.add_argument("--emotions", nargs="+", help="one per audio file, or one for all")
    p.add_argument("--cross", action="store_true", help="every audio file under every emotion")
    p.add_argument("--participants", type=int, default=24, help="multiple of the screen width keeps positions balanced")
    p.add_argument("--layout", choices=LAYOUTS, default="panel", help="panel: all methods side by side (the paper's)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help=f"must include {REFERENCE!r}")
    p.add_argument("--aspects", nargs="+", default=list(ASPECTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain-ids", action="store_true", help="participant ids P01.. without the random suffix "
                   "(anyone who guesses an id could then open that participant's screens)")
    p.add_argument("--reference", action="append", default=[], metavar="EMOTION=VIDEO",
                   help="exemplar video shown with stimuli of that emotion")
    p.add_argument("--training-set", action="append", default=[], metavar="METHOD=TEXT", help="for the tables")
    p.add_argument("--renderer", default="pipeline", help=f"{tuple(RENDERERS)} or module:function")
    p.add_argument("--checkpoint", action="append", default=[], metavar="METHOD=FOLDER",
                   help="DFM checkpoint of a method (each ablation needs one)")
    p.add_argument("--intensity", type=float, default=1.0)
    p.add_argument("--device", default=None)
    p.add_argument("--dry-run", action="store_true", help="write the manifest only")
    p.add_argument("--resume", action="store_true", help="render the missing clips of an existing study folder")
    args = p.parse_args(argv)
    from blendtalk.expression.emotions import check_intensity
    from blendtalk.speech.audio import ACCEPTED, FFMPEG_SUFFIXES, SOUNDFILE_SUFFIXES

    try:
        check_intensity(args.intensity)
        for audio in args.audio or ():  # before the manifest is written, in a dry run too
            if audio.suffix.lower() not in SOUNDFILE_SUFFIXES + FFMPEG_SUFFIXES:
                raise ValueError(f"--audio {audio}: not an audio file; accepted: {ACCEPTED}")
        for name, folder in _pairs(args.checkpoint, "--checkpoint", p).items():
            if not Path(folder).is_dir():
                p.error(f"--checkpoint {name}={folder}: no such folder")
    except ValueError as err:
        p.error(str(err))
    try:
        study = Study.load(args.out / MANIFEST) if args.resume else None
        if study is None and (not args.audio or not args.emotions):
            p.error("--audio and --emotions are required (unless --resume)")
        render = None
        if not args.dry_run:  # resolve first: a renderer that cannot run should fail before anything is written
            render = resolve_renderer(args.renderer, methods=study.methods if study else args.methods,
                                      checkpoints=_pairs(args.checkpoint, "--checkpoint", p),
                                      device=args.device, intensity=args.intensity)
        if study is None:
            info = {m: {"training_set": t} for m, t in _pairs(args.training_set, "--training-set", p).items()}
            study = create_study(args.out, args.audio, args.emotions, args.participants, args.methods, args.layout,
                                 args.cross, args.seed, args.aspects, not args.plain_ids,
                                 references=_pairs(args.reference, "--reference", p), method_info=info)
            print(f"wrote {args.out / MANIFEST}: {len(study.stimuli)} stimuli x {len(study.methods)} methods, "
                  f"{len(study.participants)} participants x {len(study.participants[0].trials)} screens")
        if render is not None:
            done = render_clips(study, args.out, render)
            print(f"rendered {len(done)} clips into {args.out}")
    except (StudyError, RendererUnavailable, FileNotFoundError, ImportError) as e:
        print(f"make_clips: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))

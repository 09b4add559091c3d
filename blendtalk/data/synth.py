"""Synthetic speech and expression corpora on the face rig, with the true factors saved.

    python -m blendtalk.data.synth --out data/synth

writes
    speech/       VOCASET raw layout (data_verts.npy, raw_audio_fixed.pkl, templates.pkl, subj_seq_to_idx.pkl)
    expression/   Florence4D-like layout (<subject>/<emotion>/vertices.npy; OBJ frames with --meshes)
    truth/speech/<subject>_<sentence>.npz       speech (T, 52), leak (T, 52) rig weights, phones
    truth/expression/<subject>_<emotion>.npz    expression (T, 52), leak (T, 52) rig weights
    corpus.json                                 the SynthConfig and the speaker/subject styles

Every frame's vertices are `rig(pure + leak)`: the rig is linear, so the pure part and the leak are
exact, additive displacements. How the leaks are made follows what real data show (DESIGN.md 8):
a speaker is never perfectly neutral, so the speech corpus carries a low-amplitude, slowly varying
activation of one emotion's units; actors move their mouths while emoting, so the expression corpus
carries fast articulation from a random phone stream, uncorrelated with the emotion. The generator
was fixed from that principle before any model was trained on it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..constants import FPS, SAMPLE_RATE
from ..expression.emotions import EMOTIONS, SubjectStyle, emotion_curve, emotion_weights
from ..speech.tts import SPEAKER_VOICES, EspeakTTS
from ..face.rig import FaceRig, load_rig
from ..speech.visemes import SpeakerStyle, random_phone_stream, visemes_to_weights
from .florence import write_florence
from .sentences import SENTENCES
from .vocaset import VocasetRawWriter

LEAK_EMOTIONS = ("happy", "sad", "surprised", "contempt", "angry")  # a speaker's resting tendencies


@dataclass
class SynthConfig:
    num_speakers: int = 8  # VOCASET has 12; 8 keeps the default corpus under a few minutes to make
    sentences_per_speaker: int = 40  # as in VOCASET
    num_subjects: int = 8  # expression corpus subjects
    takes_per_emotion: int = 2  # dynamic sequences per subject and emotion, different intensity and timing
    expression_seconds: float = 3.0  # length of each expression sequence
    speech_leak: tuple[float, float] = (0.08, 0.3)  # range of the emotion-unit leak's peak amplitude in speech
    expression_leak: tuple[float, float] = (0.2, 0.45)  # range of the articulation leak's amplitude in expressions
    leak_period: tuple[float, float] = (2.0, 6.0)  # s, the speech leak varies this slowly
    rate_range: tuple[int, int] = (140, 200)  # words per minute of the TTS voices
    pitch_range: tuple[int, int] = (35, 65)  # eSpeak pitch (50 = the voice's normal)
    blink_rate: float = 12.0  # blinks per minute in expression sequences
    seed: int = 0
    write_meshes: bool = False  # also write one OBJ per expression frame, as the real release does (slow, large)


def speaker_name(i: int) -> str:
    return f"SynthSpk{i:02d}"


def subject_name(i: int) -> str:
    return f"SynthSub{i:02d}"


def slow_curve(num_frames: int, rng: np.random.Generator, period: tuple[float, float], fps: float = FPS) -> np.ndarray:
    """A smooth random curve in [0, 1] varying on the scale of `period` seconds: (T,)."""
    t = np.arange(num_frames) / fps
    curve = np.zeros(num_frames)
    for _ in range(3):
        p = rng.uniform(*period)
        curve += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * t / p + rng.uniform(0, 2 * np.pi))
    return 0.5 + 0.5 * curve / 2.3 if num_frames else curve


def speech_leak(num_frames: int, rng: np.random.Generator, emotion: str, config: SynthConfig) -> np.ndarray:
    """Expression-like leak in speech: one emotion's units at a low, slowly varying level. (T, 52)."""
    peak = rng.uniform(*config.speech_leak)
    return (peak * slow_curve(num_frames, rng, config.leak_period))[:, None] * emotion_weights(emotion)[None]


def expression_leak(num_frames: int, rng: np.random.Generator, rig: FaceRig, config: SynthConfig) -> np.ndarray:
    """Speech-like leak in an expression: articulation of a random phone stream, scaled. (T, 52)."""
    phones = random_phone_stream(num_frames / FPS, rng, rate=rng.uniform(0.8, 1.5))
    style = SpeakerStyle.sample(rng)
    return rng.uniform(*config.expression_leak) * visemes_to_weights(phones, num_frames, rig, style)


def generate_speech(out: Path, rig: FaceRig, config: SynthConfig, tts: EspeakTTS) -> dict:
    """Speech corpus (VOCASET raw layout) and its truth; returns the speaker descriptions."""
    rng = np.random.default_rng([config.seed, 1])
    speakers = []
    for i in range(config.num_speakers):
        speakers.append({
            "name": speaker_name(i),
            "voice": SPEAKER_VOICES[i % len(SPEAKER_VOICES)],
            "rate": int(rng.integers(*config.rate_range)),
            "pitch": int(rng.integers(*config.pitch_range)),
            "style": asdict(SpeakerStyle.sample(rng)),
            "leak_emotion": LEAK_EMOTIONS[i % len(LEAK_EMOTIONS)],
            "sentences": [int(k) for k in rng.permutation(len(SENTENCES))[: config.sentences_per_speaker]],
        })
    truth = out / "truth" / "speech"
    truth.mkdir(parents=True, exist_ok=True)
    templates = {s["name"]: rig.vertices for s in speakers}
    total = sum(len(s["sentences"]) for s in speakers)
    with VocasetRawWriter(out / "speech", templates, fps=FPS, overwrite=True, meta={"generator": "blendtalk.data.synth"}) as w, \
            tqdm(total=total, desc="speech corpus", unit="seq") as bar:
        for spk in speakers:
            style = SpeakerStyle(**spk["style"])
            for n, k in enumerate(spk["sentences"]):
                seq_rng = np.random.default_rng([config.seed, 2, int(spk["name"][-2:]), n])
                audio, phones = tts.synthesize(SENTENCES[k], voice=spk["voice"], rate=spk["rate"], pitch=spk["pitch"])
                num_frames = int(round(len(audio) * FPS / SAMPLE_RATE))
                pure = visemes_to_weights(phones, num_frames, rig, style)
                leak = speech_leak(num_frames, seq_rng, spk["leak_emotion"], config).astype(np.float32)
                sentence = f"sentence{n + 1:02d}"
                audio = np.clip(audio, -1.0, 1.0)  # resampling can overshoot full scale by a hair
                w.add(spk["name"], sentence, rig(pure + leak), audio, SAMPLE_RATE)
                np.savez_compressed(
                    truth / f"{spk['name']}_{sentence}.npz", speech=pure, leak=leak, text=np.array(SENTENCES[k]),
                    phone_symbols=np.array([p.symbol for p in phones]),
                    phone_times=np.array([[p.start, p.end] for p in phones], dtype=np.float64),
                )
                bar.update()
    return {"speakers": speakers}


def generate_expressions(out: Path, rig: FaceRig, config: SynthConfig) -> dict:
    """Expression corpus (Florence4D-like layout) and its truth; returns the subject descriptions."""
    rng = np.random.default_rng([config.seed, 3])
    num_frames = int(round(config.expression_seconds * FPS))
    subjects = [{"name": subject_name(i), "style": SubjectStyle.sample(rng)} for i in range(config.num_subjects)]
    truth = out / "truth" / "expression"
    truth.mkdir(parents=True, exist_ok=True)
    total = config.num_subjects * len(EMOTIONS) * config.takes_per_emotion
    with tqdm(total=total, desc="expression corpus", unit="seq") as bar:
        for s, sub in enumerate(subjects):
            for e, emotion in enumerate(EMOTIONS):
                for take in range(config.takes_per_emotion):
                    seq_rng = np.random.default_rng([config.seed, 4, s, e, take])
                    pure = emotion_curve(
                        emotion, num_frames, intensity=seq_rng.uniform(0.6, 1.0), onset=seq_rng.uniform(0.3, 0.7),
                        offset=seq_rng.uniform(0.3, 0.7), start=seq_rng.uniform(0.0, 0.3), seed=seq_rng,
                        subject=sub["style"], blink_rate=config.blink_rate,
                    ).astype(np.float32)
                    leak = expression_leak(num_frames, seq_rng, rig, config).astype(np.float32)
                    name = f"{emotion}{take + 1}" if config.takes_per_emotion > 1 else emotion
                    write_florence(
                        out / "expression", sub["name"], name, rig(pure + leak), faces=rig.triangles,
                        template=rig.vertices, fps=FPS, write_meshes=config.write_meshes, overwrite=True,
                    )
                    np.savez_compressed(truth / f"{sub['name']}_{name}.npz", expression=pure, leak=leak,
                                        emotion=np.array(emotion))
                    bar.update()
    return {"subjects": [{"name": s["name"], "style": asdict(s["style"])} for s in subjects]}


def _jsonable(value):
    return value.tolist() if isinstance(value, np.ndarray) else float(value)


def generate(out: str | Path, config: SynthConfig = SynthConfig(), rig: FaceRig | None = None) -> Path:
    """Write both corpora and their truth under `out`. Deterministic for `config.seed`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rig = rig or load_rig()
    described = {"config": asdict(config), "rig": rig.name, "fps": FPS, "sample_rate": SAMPLE_RATE}
    described |= generate_speech(out, rig, config, EspeakTTS())
    described |= generate_expressions(out, rig, config)
    (out / "corpus.json").write_text(json.dumps(described, indent=1, default=_jsonable))
    return out


def main(argv=None) -> int:
    defaults = SynthConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (existing corpus files there are replaced)")
    parser.add_argument("--speakers", type=int, default=defaults.num_speakers)
    parser.add_argument("--sentences", type=int, default=defaults.sentences_per_speaker, help=f"per speaker, at most {len(SENTENCES)}")
    parser.add_argument("--subjects", type=int, default=defaults.num_subjects)
    parser.add_argument("--takes", type=int, default=defaults.takes_per_emotion, help="sequences per subject and emotion")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--meshes", action="store_true", help="also write OBJ frames for the expression corpus")
    args = parser.parse_args(argv)
    for name, value, low, high in (("--speakers", args.speakers, 1, 1000), ("--sentences", args.sentences, 1, len(SENTENCES)),
                                   ("--subjects", args.subjects, 1, 1000), ("--takes", args.takes, 1, 100)):
        if not low <= value <= high:
            parser.error(f"{name} must be between {low} and {high}, got {value}")
    config = SynthConfig(num_speakers=args.speakers, sentences_per_speaker=args.sentences, num_subjects=args.subjects,
                         takes_per_emotion=args.takes, seed=args.seed, write_meshes=args.meshes)
    out = generate(args.out, config)
    print(f"corpora written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Build the live mode's pooled prior (assets/live/prior.json) from many voices we may ship.

    python tools/build_live_prior.py                      # the shipped asset
    python tools/build_live_prior.py --out /tmp/prior.json --pitches 50 --sentences 2

Voices: the recordings given (by default the shipped ARCTIC sentence) and eSpeak NG speech of the
synthetic corpus's voices (`speech.tts.SPEAKER_VOICES`) at each pitch, saying the first N corpus
sentences. Each voice's log-mel and cepstral statistics are measured and pooled with equal weight
per voice (`blendtalk.live.prior`); the file keeps every voice's statistics, the pool and this
recipe. eSpeak's output varies a little from call to call (durations by a few ms), so a rebuild
matches the shipped file to about 1e-3 in the pooled values, not bit for bit.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blendtalk.constants import ASSETS_DIR  # noqa: E402
from blendtalk.live.prior import PRIOR_PATH, SPREADS  # noqa: E402
from blendtalk.speech.tts import SPEAKER_VOICES  # noqa: E402

PITCHES = (35, 65)  # the corpus's pitch range (data.synth: 35-65), both ends
RATE = 175  # words per minute: eSpeak's default, the corpus's middle (140-200)
SENTENCES = 4  # corpus sentences per voice (about 10 s of speech)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=PRIOR_PATH)
    p.add_argument("--recordings", type=Path, nargs="*", default=[ASSETS_DIR / "audio" / "arctic_a0009.wav"],
                   help="recorded speech, one voice each")
    p.add_argument("--voices", nargs="*", default=list(SPEAKER_VOICES), help="eSpeak NG voices (lang+variant)")
    p.add_argument("--pitches", type=int, nargs="+", default=list(PITCHES), help="eSpeak pitch, 0..100 (50 normal)")
    p.add_argument("--rate", type=int, default=RATE, help="eSpeak words per minute")
    p.add_argument("--sentences", type=int, default=SENTENCES, help="corpus sentences per eSpeak voice")
    p.add_argument("--spread", choices=SPREADS, default="within",
                   help="prior mel spread: mean within-voice variance, or plus the variance of the voices' means")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = p.parse_args(argv)
    if args.out.exists() and not args.force:
        p.error(f"{args.out} exists; pass --force to rebuild it, or --out another file")
    if not args.recordings and not args.voices:
        p.error("give at least one recording or eSpeak voice")
    if not 1 <= args.sentences <= 50:
        p.error("--sentences must be in [1, 50]")
    for r in args.recordings:
        if not r.is_file():
            p.error(f"recording {r} not found")
    if any(not 0 <= x <= 100 for x in args.pitches):
        p.error("--pitches must be in 0..100")

    from tqdm import tqdm

    from blendtalk.data.sentences import SENTENCES as TEXTS
    from blendtalk.live.prior import save_prior, voice_stats
    from blendtalk.speech.audio import load_audio
    from blendtalk.speech.tts import EspeakTTS

    voices = [voice_stats(r.stem, [load_audio(r)], source=r.name) for r in args.recordings]
    tts = EspeakTTS() if args.voices else None
    texts = TEXTS[: args.sentences]
    jobs = [(v, pitch) for v in args.voices for pitch in args.pitches]
    for voice, pitch in tqdm(jobs, desc="voices"):
        try:
            clips = [tts.synthesize(t, voice=voice, rate=args.rate, pitch=pitch)[0] for t in texts]
        except ValueError as err:
            p.error(str(err))
        voices.append(voice_stats(f"espeak:{voice}@{pitch}", clips, "espeak", voice, pitch))
    recipe = {"recordings": [r.name for r in args.recordings], "espeak_voices": args.voices, "pitches": args.pitches,
              "rate": args.rate, "sentences": list(texts), "weights": "equal per voice",
              "command": " ".join(["python tools/build_live_prior.py", *(sys.argv[1:] if argv is None else argv)])}
    prior = save_prior(args.out, voices, args.spread, recipe)
    print(f"{args.out}: {len(voices)} voices, {sum(v.seconds for v in voices):.0f} s; pooled mel mean "
          f"{prior.mel_mean.mean():.2f}, spread {prior.mel_std.mean():.2f} (band averages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

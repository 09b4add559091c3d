"""pocketsphinx primitives shared by alignment in this process (blendtalk.speech.phonetics) and the
recognition worker processes (blendtalk.speech.phone_workers): the allphone decoder, one utterance's
decoding, pocketsphinx's phone names as ARPAbet. pocketsphinx itself is imported on first use."""

from __future__ import annotations

from pathlib import Path

from ..constants import SAMPLE_RATE
from .phones import PHONE_INDEX, Phone

ALIGN_FRAME_RATE = 100  # pocketsphinx frames per second (10 ms frame shift)


def allphone_decoder():
    """A pocketsphinx decoder for phone recognition without a transcript (CMU en-US phone LM)."""
    from pocketsphinx import Decoder, get_model_path

    # Beams and language weight as recommended for pocketsphinx phoneme recognition.
    return Decoder(samprate=SAMPLE_RATE, allphone=str(Path(get_model_path()) / "en-us" / "en-us-phone.lm.bin"),
                   lm=None, backtrace=True, beam=1e-20, pbeam=1e-20, lw=2.0, loglevel="FATAL")


def allphone_segments(decoder, pcm: bytes) -> list[Phone]:
    """Allphone recognition of 16-bit PCM -> phones as recognised (times from the start, gaps possible).

    `decoder` must be new (`allphone_decoder()`, nothing decoded yet): one that has decoded another
    clip gives this one other phones (its search carries state over; cmn=batch, set_cmn and
    remove_noise=False do not stop it), and the same clip must always get the same phones."""
    decode(decoder, pcm)
    return [Phone(sphinx_symbol(s.word), s.start_frame / ALIGN_FRAME_RATE, (s.end_frame + 1) / ALIGN_FRAME_RATE)
            for s in decoder.seg()]


def decode(decoder, pcm: bytes) -> None:
    """Run `decoder` over one utterance of 16-bit PCM at 16 kHz."""
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()


def sphinx_symbol(name: str) -> str:
    """pocketsphinx phone name (CMU set upper case, SIL, +NOISE+ fillers) -> ARPABET symbol."""
    symbol = name.lower()
    return symbol if symbol in PHONE_INDEX else "sil"

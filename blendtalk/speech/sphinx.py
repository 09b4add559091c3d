"""pocketsphinx primitives shared by alignment in this process (blendtalk.speech.phonetics) and the
recognition worker processes (blendtalk.speech.phone_workers): the word, alignment and allphone
decoders, one utterance's decoding, recognition (`Recogniser`), pocketsphinx's phone names as
ARPAbet. pocketsphinx itself is imported on first use."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..constants import SAMPLE_RATE
from .phones import PHONE_INDEX, Phone

if TYPE_CHECKING:
    from pocketsphinx import Decoder

logger = logging.getLogger(__name__)

ALIGN_FRAME_RATE = 100  # pocketsphinx frames per second (10 ms frame shift)
# Pruning beams for the word-alignment pass. The recognition defaults (1e-48) prune the only
# path of a linear transcript grammar on synthetic or multi-sentence speech ("final result does
# not match the grammar"; 1e-100 still fails on 75 s of TTS). A grammar this small is cheap to
# search almost exhaustively: 126 s of speech aligns in about 6 s on one CPU core.
ALIGN_BEAMS = {"beam": 1e-200, "wbeam": 1e-200, "pbeam": 1e-200}
# The word pass of recognition: one pass (no flat-lexicon rescoring) with at most 3000 HMMs active a
# frame. On ARCTIC and 24 flite sentences it decoded in 0.10 s per second of speech instead of 0.16 s
# at 28% word errors instead of 30% (docs/experiments.md).
WORD_SEARCH = {"fwdflat": False, "maxhmmpf": 3000}


def word_decoder() -> Decoder:
    """A pocketsphinx decoder for words: the wheel's en-US trigram LM and CMU dictionary."""
    from pocketsphinx import Decoder

    return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", **WORD_SEARCH)


def align_decoder() -> Decoder:
    """A pocketsphinx decoder for forced alignment (`aligned_phones`)."""
    from pocketsphinx import Decoder

    # lm=None: alignment builds its own search from the transcript; no N-gram LM needed.
    return Decoder(samprate=SAMPLE_RATE, lm=None, bestpath=False, loglevel="FATAL", **ALIGN_BEAMS)


def allphone_decoder() -> Decoder:
    """A pocketsphinx decoder for phone recognition without a transcript (CMU en-US phone LM)."""
    from pocketsphinx import Decoder, get_model_path

    # Beams and language weight as recommended for pocketsphinx phoneme recognition.
    return Decoder(samprate=SAMPLE_RATE, allphone=str(Path(get_model_path()) / "en-us" / "en-us-phone.lm.bin"),
                   lm=None, backtrace=True, beam=1e-20, pbeam=1e-20, lw=2.0, loglevel="FATAL")


def allphone_segments(decoder, pcm: bytes) -> list[Phone]:
    """Allphone recognition of 16-bit PCM -> phones as recognised (times from the start, gaps possible)."""
    decode(decoder, pcm, fresh=True)
    return [Phone(sphinx_symbol(s.word), s.start_frame / ALIGN_FRAME_RATE, (s.end_frame + 1) / ALIGN_FRAME_RATE)
            for s in decoder.seg() or []]  # None for audio too short to hold a frame


def aligned_phones(decoder, pcm: bytes, words: list[str]) -> list[Phone]:
    """Forced alignment of `words` (all in the decoder's dictionary) to 16-bit PCM -> their phones
    (times from the start). RuntimeError where they cannot be aligned."""
    decoder.set_align_text(" ".join(words))
    decode(decoder, pcm, fresh=True)  # pass 1: word alignment
    decoder.set_alignment()
    decode(decoder, pcm)  # pass 2: phone and state alignment within those words
    return [Phone(sphinx_symbol(e.name), e.start / ALIGN_FRAME_RATE, (e.start + e.duration) / ALIGN_FRAME_RATE)
            for e in decoder.get_alignment().phones()]


class Recogniser:
    """Phones from speech without a transcript: the words pocketsphinx hears with its language model,
    then those words' dictionary phones aligned to the audio; allphone recognition (a phone bigram,
    no words) where it hears no word or the words do not align.

    Words give each phone the company of its word: on ARCTIC and 48 flite sentences
    (eval/phone_recognition.py) the frames' phones were right 77% of the time (vowels 75%) against
    allphone's 68% (58%), and it heard 123 of 138 /p b m/ with 11 false ones against 121 and 27,
    for 0.13 s per second of speech against allphone's 0.04. A wrong word still brings phones that
    sound like the audio. The decoders start each clip afresh (`decode(fresh=True)`), so the same
    clip gets the same phones whatever they heard before. Where the word LM cannot be loaded (a
    pocketsphinx slimmed without it), every clip gets allphone's phones.
    """

    def __init__(self, align=None) -> None:
        self._align = align  # an `align_decoder()` to share (a PhoneAligner's aligns transcripts too)
        self._words = None  # built on first use (about 0.4 s)
        self._no_words = False  # the word LM did not load: allphone for every clip
        self._phones = None  # the allphone decoder, built for the first clip without words

    def built(self) -> "Recogniser":
        """Build the decoders now (a worker process does so while its audio arrives); returns self."""
        if self._words is None and not self._no_words:
            try:
                self._words = word_decoder()
            except RuntimeError as err:  # pocketsphinx says only "Failed to initialize"
                logger.warning("pocketsphinx's word LM did not load (%s); recognising phones without words", err)
                self._no_words = True
        if self._align is None:
            self._align = align_decoder()
        return self

    def __call__(self, pcm: bytes) -> list[Phone]:
        """16-bit PCM at 16 kHz -> phones as recognised (times from the start, gaps possible)."""
        self.built()
        words = []
        if self._words is not None:
            decode(self._words, pcm, fresh=True)
            hyp = self._words.hyp()
            words = hyp.hypstr.split() if hyp is not None else []
        if words:
            try:
                return aligned_phones(self._align, pcm, words)
            except RuntimeError as err:  # the alignment found no path through these words
                logger.debug("the words heard did not align (%s); recognising phones without them", err)
        if self._phones is None:
            self._phones = allphone_decoder()
        return allphone_segments(self._phones, pcm)


def decode(decoder, pcm: bytes, fresh: bool = False) -> None:
    """Run `decoder` over one utterance of 16-bit PCM at 16 kHz. fresh: first reset its feature
    computation, whose cepstral mean otherwise carries over from what it decoded before (a used
    decoder then hears a clip otherwise than a new one: "for all is a study" became "we're always
    on duty"; neither batch CMN nor `set_cmn` stops it)."""
    if fresh:
        decoder.reinit_feat()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()


def sphinx_symbol(name: str) -> str:
    """pocketsphinx phone name (CMU set upper case, SIL, +NOISE+ fillers) -> ARPABET symbol."""
    symbol = name.lower()
    return symbol if symbol in PHONE_INDEX else "sil"

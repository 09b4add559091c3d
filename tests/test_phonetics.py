"""Phones: eSpeak NG TTS timings, pocketsphinx alignment/recognition, frame conversion."""

import difflib
import logging

import numpy as np
import pytest

from blendtalk.speech.audio import log_mel, num_frames
from blendtalk.constants import FPS, SAMPLE_RATE
from blendtalk.speech.phones import (
    ARPABET, BILABIALS, Phone, cover_phones, phone_error_rate, phones_to_frames, read_phone_labels,
    write_phone_labels,
)
from blendtalk.speech.phonetics import PhoneAligner, load_arctic_fixture, pause_cuts, phone_features, piece_bounds
from blendtalk.speech.tts import ESPEAK_TO_ARPABET, SPEAKER_VOICES, EspeakTTS, FliteTTS, espeak_to_arpabet, synthesize

TEXT = "Maybe my mother makes the best plum pie."
ARCTIC_TEXT = "He turned sharply, and faced Gregson across the table."


@pytest.fixture(scope="module")
def tts():
    return EspeakTTS()


@pytest.fixture(scope="module")
def aligner():
    return PhoneAligner()


@pytest.fixture(scope="module")
def arctic():
    return load_arctic_fixture()


def _check_cover(audio, phones):
    """Phones tile [0, len(audio) / SAMPLE_RATE]: monotone, no gaps or overlaps, ARPAbet symbols."""
    duration = audio.shape[0] / SAMPLE_RATE
    assert phones[0].start == 0.0
    assert abs(phones[-1].end - duration) <= 1.0 / FPS
    for a, b in zip(phones, phones[1:]):
        assert a.end == pytest.approx(b.start, abs=1e-9)
    assert all(p.end > p.start for p in phones)
    assert {p.symbol for p in phones} <= set(ARPABET)


def _start_errors(ref, hyp):
    """|start difference| in seconds for phones matched by symbol sequence; and len(ref)."""
    sm = difflib.SequenceMatcher(a=[p.symbol for p in ref], b=[p.symbol for p in hyp], autojunk=False)
    errs = [abs(ref[a + k].start - hyp[b + k].start) for a, b, n in sm.get_matching_blocks() for k in range(n)]
    return np.array(errs), len(ref)


def test_phone_set_unchanged():
    assert len(ARPABET) == 40 and ARPABET[0] == "sil" and len(set(ARPABET)) == 40
    assert BILABIALS == ("p", "b", "m")


def test_espeak_table_targets_are_arpabet():
    for name, phones in ESPEAK_TO_ARPABET.items():
        assert phones and set(phones) <= set(ARPABET), name
    assert espeak_to_arpabet("'eI") == (("ey",), True)  # stress mark stripped
    assert espeak_to_arpabet(",A@") == (("aa", "r"), True)
    assert espeak_to_arpabet("t#") == (("t",), True)
    assert espeak_to_arpabet("E2") == (("eh",), False)  # unknown allophone -> its base phone
    assert espeak_to_arpabet("Q")[0] == ("sil",) and espeak_to_arpabet("@7")[0] == ("ah",)


def test_tts_phones_cover_audio(tts):
    audio, phones = synthesize(TEXT, tts=tts)
    assert audio.dtype == np.float32 and audio.ndim == 1
    _check_cover(audio, phones)
    spoken = [p.symbol for p in phones if p.symbol != "sil"]
    assert spoken[:8] == ["m", "ey", "b", "iy", "m", "ay", "m", "ah"]
    assert sum(s in BILABIALS for s in spoken) >= 8
    # Frame-level: every motion frame gets a phone, bilabial frames exist.
    ids = phones_to_frames(phones, num_frames(audio.shape[0]))
    assert np.isin(ids, [ARPABET.index(b) for b in BILABIALS]).sum() >= 8


def test_tts_timings_agree_with_forced_alignment(tts, aligner):
    # eSpeak's timings are exact by construction; an independent aligner should agree with them.
    audio, phones = tts.synthesize(ARCTIC_TEXT, voice="en-us")
    errs, n = _start_errors(phones, aligner.align(audio, ARCTIC_TEXT))
    assert len(errs) >= 0.8 * n
    assert np.mean(errs < 0.05) >= 0.85 and np.median(errs) < 0.03


def test_voices_rate_pitch_change_audio(tts):
    names = tts.voices()
    assert {"en-us", "en", "en-gb-x-rp", "en-gb-scotland"} <= set(names)
    assert len(tts.voices(variants=True)) > 100
    runs = {v: tts.synthesize(TEXT, voice=v) for v in ("en-us", "en-us+f3", "en-gb-x-rp")}
    for audio, phones in runs.values():
        _check_cover(audio, phones)
    # A female variant: a clearly different average spectrum (mean |log-power difference|).
    spectra = {v: log_mel(audio).mean(axis=0) for v, (audio, _) in runs.items()}
    assert np.abs(spectra["en-us"] - spectra["en-us+f3"]).mean() > 0.5
    # Another accent: different phones (RP is non-rhotic: "mother" ends in ah, not er) and timing.
    us, rp = ([p.symbol for p in runs[v][1]] for v in ("en-us", "en-gb-x-rp"))
    assert us != rp and runs["en-us"][0].shape != runs["en-gb-x-rp"][0].shape
    slow, _ = tts.synthesize(TEXT, rate=120)
    fast, _ = tts.synthesize(TEXT, rate=300)
    assert slow.shape[0] > 1.8 * fast.shape[0]
    low, _ = tts.synthesize(TEXT, pitch=10)
    high, _ = tts.synthesize(TEXT, pitch=90)
    assert not np.allclose(low[: high.shape[0]], high[: low.shape[0]])


@pytest.mark.parametrize("voice", SPEAKER_VOICES)
def test_speaker_voices_exist(tts, voice):
    audio, phones = tts.synthesize("Hello there.", voice=voice)
    _check_cover(audio, phones)


def test_tts_errors(tts):
    with pytest.raises(ValueError, match="Unknown eSpeak voice 'xx-yy'"):
        tts.synthesize(TEXT, voice="xx-yy")
    with pytest.raises(ValueError, match="rate"):
        tts.synthesize(TEXT, rate=20)
    with pytest.raises(ValueError, match="pitch"):
        tts.synthesize(TEXT, pitch=150)
    with pytest.raises(ValueError, match="has no words"):
        tts.synthesize("  ...  ")
    # The engine still works after errors (no lock left held).
    assert tts.synthesize("Yes.")[0].size > 0


def test_unknown_espeak_phoneme_logged_once(tts, caplog):
    with caplog.at_level(logging.WARNING, logger="blendtalk.speech.tts"):
        phones = tts._phones([("Q9", 0), ("Q9", 100), ("m", 200)], 400)
        tts._phones([("Q9", 0)], 100)
    assert [p.symbol for p in phones] == ["sil", "sil", "m"]
    assert sum("Q9" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.skipif(not FliteTTS.available(), reason="Debian flite binary not installed")
def test_flite_phones_cover_audio():
    flite = FliteTTS()
    audio, phones = synthesize(TEXT, voice="slt", tts=flite)
    _check_cover(audio, phones)
    assert [p.symbol for p in phones if p.symbol != "sil"][:4] == ["m", "ey", "b", "iy"]


def test_arctic_fixture(arctic):
    audio, phones, transcript = arctic
    assert transcript == ARCTIC_TEXT
    assert len(phones) == 40 and {p.symbol for p in phones} <= set(ARPABET)
    assert abs(phones[-1].end - audio.shape[0] / SAMPLE_RATE) < 0.05


def test_forced_alignment_matches_arctic_labels(arctic, aligner):
    audio, ref, transcript = arctic
    hyp = aligner.align(audio, transcript)
    _check_cover(audio, hyp)
    errs, n = _start_errors(ref, hyp)
    share = np.sum(errs < 0.05) / n  # unmatched phones count as misses
    print(f"\nARCTIC forced alignment: {share:.1%} of {n} phone starts within 50 ms, "
          f"median error {1000 * np.median(errs):.1f} ms")
    assert share >= 0.9


def test_alignment_unknown_words(arctic, aligner, caplog):
    audio, _, _ = arctic
    text = "He turned sharply and faced Grogsnik across the table"
    with pytest.raises(ValueError, match="grogsnik"):
        aligner.align(audio, text, on_unknown="error")
    with caplog.at_level(logging.WARNING, logger="blendtalk.speech.phonetics"):
        phones = aligner.align(audio, text, on_unknown="g2p")
    assert "grogsnik" in caplog.text
    _check_cover(audio, phones)
    assert [p.symbol for p in phones if p.symbol != "sil"][:4] == ["hh", "iy", "t", "er"]
    with pytest.raises(ValueError, match="no words"):
        aligner.align(audio, " ,. ")


def test_recognition_plausible(arctic, aligner, word_lm):
    audio, ref, _ = arctic
    hyp = aligner.recognize(audio)
    _check_cover(audio, hyp)
    per = phone_error_rate([p.symbol for p in ref], [p.symbol for p in hyp])
    print(f"\nARCTIC recognition: phone error rate {per:.1%}")
    assert per < 0.2  # allphone alone: 42%
    # Speech is recognised as speech where the labels say so, silence at the edges.
    frames_ref = phones_to_frames(ref, num_frames(audio.shape[0]))
    frames_hyp = phones_to_frames(hyp, num_frames(audio.shape[0]))
    assert np.mean((frames_ref == 0) == (frames_hyp == 0)) > 0.9


def test_recognition_aligns_the_words_it_hears(arctic, word_lm):
    """Recognition hears ARCTIC's sentence word for word, so its phones are the transcript's aligned."""
    audio, _, transcript = arctic
    aligner = PhoneAligner()
    assert aligner.recognize(audio) == aligner.align(audio, transcript)


def test_recognition_falls_back_to_phones(arctic, monkeypatch, caplog):
    """Where the word pass hears nothing, its words do not align or its LM does not load, allphone
    recognition answers."""
    import blendtalk.speech.sphinx as sphinx
    from blendtalk.speech.phonetics import _to_pcm16
    from blendtalk.speech.sphinx import Recogniser, allphone_decoder, allphone_segments

    class Deaf:  # a word decoder that hears no word
        def reinit_feat(self): pass
        def start_utt(self): pass
        def process_raw(self, pcm, full_utt): pass
        def end_utt(self): pass
        def hyp(self): return None

    class Unaligned(Deaf):  # an alignment whose second pass finds no path, as pocketsphinx's does
        def set_align_text(self, text): pass
        def set_alignment(self): raise RuntimeError("Failed to set up sub-word alignment")

    class Hears(Deaf):
        def hyp(self): return type("Hyp", (), {"hypstr": "he turned"})()

    pcm = _to_pcm16(arctic[0])
    phones_only = allphone_segments(allphone_decoder(), pcm)
    deaf = Recogniser(align=Unaligned())
    deaf._words = Deaf()
    assert deaf(pcm) == phones_only
    unaligned = Recogniser(align=Unaligned())
    unaligned._words = Hears()
    assert unaligned(pcm) == phones_only

    def no_lm():
        raise RuntimeError("Failed to initialize PocketSphinx")

    monkeypatch.setattr(sphinx, "word_decoder", no_lm)
    with caplog.at_level(logging.WARNING):
        assert Recogniser()(pcm) == phones_only
    assert "word LM did not load" in caplog.text


def test_a_clip_gets_the_same_phones_whatever_came_before(arctic, tts):
    """The file path's phones depend on the clip alone: the app's second request for a clip once got
    other phones than its first (a reused pocketsphinx decoder), and than a new CLI process. A used
    word decoder heard this eSpeak sentence as "we're always on duty" after ARCTIC, a new one as
    "for all is a study"; alignments and recognitions share a decoder too."""
    audio, _, _ = arctic
    other, _ = tts.synthesize("Four hours of steady work faced us.")
    first_other = PhoneAligner().recognize(other)
    first_aligned = PhoneAligner().align(audio, ARCTIC_TEXT)
    used = PhoneAligner()
    first = used.recognize(audio)
    assert used.recognize(other) == first_other
    assert used.align(audio, ARCTIC_TEXT) == first_aligned
    assert used.recognize(audio) == first
    assert used.recognize(other) == first_other


def test_phone_features(arctic, aligner):
    audio, ref, transcript = arctic
    t = num_frames(audio.shape[0])
    aligned = phone_features(audio, transcript, aligner=aligner)
    recognised = phone_features(audio, aligner=aligner)
    for feats in (aligned, recognised):
        assert feats.shape == (t, len(ARPABET)) and feats.dtype == np.float32
        np.testing.assert_array_equal(feats.sum(axis=1), 1.0)
    # ~75 ms phones at 33 ms frames: a 10 ms boundary shift flips a frame, so agreement is < 90 %.
    agree = np.mean(aligned.argmax(axis=1) == phones_to_frames(ref, t))
    assert agree > 0.75


def test_phones_to_frames_centres():
    phones = [Phone("m", 0.0, 0.05), Phone("aa", 0.05, 0.12), Phone("p", 0.2, 0.3)]
    ids = phones_to_frames(phones, 12, fps=FPS)
    # Frame centres: 0.0167, 0.05, 0.083, 0.117, 0.15, 0.183, 0.217, ... ; [0.12, 0.2) is a gap.
    names = [ARPABET[i] for i in ids]
    assert names == ["m", "aa", "aa", "aa", "sil", "sil", "p", "p", "p", "sil", "sil", "sil"]
    assert ids.dtype == np.int64
    assert phones_to_frames([], 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="not ARPAbet"):
        phones_to_frames([Phone("AX", 0, 1)], 3)
    with pytest.raises(ValueError, match="overlap"):
        phones_to_frames([Phone("m", 0, 0.5), Phone("p", 0.3, 0.6)], 3)


def test_cover_phones_and_labels_roundtrip(tmp_path):
    phones = cover_phones([Phone("p", 0.1, 0.2), Phone("sil", 0.2, 0.25), Phone("aa", 0.3, 0.9)], 0.5)
    assert [(p.symbol, p.start, p.end) for p in phones] == [
        ("sil", 0.0, 0.1), ("p", 0.1, 0.2), ("sil", 0.2, 0.3), ("aa", 0.3, 0.5)
    ]
    write_phone_labels(tmp_path / "x.txt", phones)
    assert read_phone_labels(tmp_path / "x.txt") == phones


def test_phone_error_rate():
    assert phone_error_rate(["sil", "a", "b", "c"], ["a", "b", "c"]) == 0.0
    assert phone_error_rate(["a", "b", "c", "d"], ["a", "x", "c"]) == 0.5  # 1 substitution + 1 deletion
    with pytest.raises(ValueError):
        phone_error_rate(["sil"], ["a"])


def test_one_aligner_shared_by_threads(arctic, aligner):
    """The app and the pipeline share one PhoneAligner; concurrent calls must take turns, not crash."""
    from concurrent.futures import ThreadPoolExecutor

    audio, _, transcript = arctic
    expected = aligner.align(audio, transcript)
    with ThreadPoolExecutor(4) as pool:
        aligned = list(pool.map(lambda _: aligner.align(audio, transcript), range(4)))
        recognized = list(pool.map(lambda _: aligner.recognize(audio), range(2)))
    assert all(a == expected for a in aligned)
    assert len(recognized[0]) > 10 and recognized[0] == recognized[1]


def test_pause_cuts_land_in_pauses_or_nowhere():
    """The middle of the pause nearest each cut's place, within a third of a piece (also in hiss);
    without one that near, no cut there: a cut inside a word loses the word."""
    rng = np.random.default_rng(0)
    second = SAMPLE_RATE
    speech = rng.normal(0, 0.1, 6 * second).astype(np.float32)
    speech[int(3.1 * second):int(3.2 * second)] = 0  # a gap too short for a pause, 0.1 s after the middle
    far = speech.copy()
    far[int(4.5 * second):int(4.8 * second)] = 0  # a pause 1.65 s after the middle: out of reach
    assert pause_cuts(far, 2) == []
    audio = speech.copy()
    audio[int(3.6 * second):int(3.9 * second)] *= 0.003  # a pause (50 dB down), 0.75 s after the middle
    (cut,) = pause_cuts(audio, 2)
    assert 3.7 * second <= cut <= 3.8 * second  # its middle, rather than the nearer gap
    hiss = rng.normal(0, 0.01, len(audio)).astype(np.float32)  # 20 dB under the speech: nothing 40 dB down
    (cut,) = pause_cuts(audio + hiss, 2)
    assert 3.7 * second <= cut <= 3.8 * second  # the pause is as quiet as the hiss, and found
    for start in (1.0, 2.2, 4.9):  # pauses near 1/5, 2/5 and 4/5 of the way (3/5: the one at 3.6-3.9 s)
        audio[int(start * second):int((start + 0.2) * second)] = 0
    cuts = pause_cuts(audio, 5)
    assert len(cuts) == 4 and cuts == sorted(cuts)  # 3/5 took the pause at 3.75 s, within a third of a piece
    assert [round(c / second, 2) for c in cuts] == [1.1, 2.3, 3.75, 5.0]
    with pytest.raises(ValueError, match="parts"):
        pause_cuts(audio, 0)
    with pytest.raises(ValueError, match="too short"):
        pause_cuts(audio[:300], 2)


def test_recognition_in_worker_processes(arctic, aligner, caplog):
    """Pieces recognised in 2 processes: phones that cover the clip and mostly agree with one pass;
    a dead worker costs a warning, not the result."""
    audio = np.concatenate([arctic[0], arctic[0]])  # 6 s: pieces of >= MIN_PIECE_SECONDS for two workers
    whole = aligner.recognize(audio)
    parallel = PhoneAligner(workers=2)
    try:
        pieces = parallel.recognize(audio)
        _check_cover(audio, pieces)
        per = phone_error_rate([p.symbol for p in whole if p.symbol != "sil"], [p.symbol for p in pieces])
        assert per < 0.15  # only the phones next to the one cut may differ
        assert len(parallel._pool._procs) == 2
        parallel._pool._procs[0].kill()
        parallel._pool._procs[0].wait()
        with caplog.at_level(logging.WARNING):
            again = parallel.recognize(audio)
        assert "worker failed" in caplog.text  # this process recognised it in one pass instead
        _check_cover(audio, again)
        assert phone_error_rate([p.symbol for p in whole if p.symbol != "sil"], [p.symbol for p in again]) < 0.15
        assert parallel.recognize(audio) and len(parallel._pool._procs) == 2  # and the workers came back
    finally:
        parallel.close()
    assert parallel._pool is None
    with pytest.raises(ValueError, match="whole number"):
        PhoneAligner(workers=-1)


def test_prefetched_recognition_gives_the_same_phones(arctic, monkeypatch):
    """A clip recognised ahead in a worker process: the phones recognition in this process finds,
    collected by the recognize() of the same samples; other audio is recognised here as before."""
    import blendtalk.speech.phonetics as phonetics

    audio = arctic[0]
    expected = PhoneAligner().recognize(audio)
    ahead = PhoneAligner()
    ahead.prefetch(audio)
    decoded_here = []

    class Counted(phonetics.Recogniser):
        def __call__(self, pcm):
            decoded_here.append(1)
            return super().__call__(pcm)

    monkeypatch.setattr(phonetics, "Recogniser", Counted)
    assert ahead.recognize(audio) == expected
    assert not decoded_here  # collected from the worker, not decoded in this process
    ahead.prefetch(audio)
    other = audio[: len(audio) // 2]
    assert ahead.recognize(other) == PhoneAligner().recognize(other)  # not the prefetched clip
    assert ahead._prefetched is None  # a stale prefetch is dropped, not kept for later
    long = np.concatenate([audio, audio])  # 6 s: two workers cut it, and so does the prefetch
    two = PhoneAligner(workers=2)
    try:
        pieces = two.recognize(long)
        decoded_here.clear()
        two.prefetch(long)
        assert two._prefetched.bounds == piece_bounds(long, 2) and len(two._prefetched.bounds) == 3
        assert two.recognize(long) == pieces and not decoded_here
    finally:
        two.close()


def test_a_one_request_worker_answers_then_exits(arctic):
    """`PhoneWorkers(once=True)` (the CLI's prefetch): the worker answers as a pool worker would, then
    exits instead of holding its models for a next request that will not come; a second request
    gets a clear error instead of a hang."""
    from blendtalk.speech.phone_workers import PhoneWorkers, WorkerError
    from blendtalk.speech.phonetics import _to_pcm16

    pcm = _to_pcm16(arctic[0])
    pool, once = PhoneWorkers(1), PhoneWorkers(1, once=True)
    try:
        assert once.recognize([pcm]) == pool.recognize([pcm])
        assert once._procs[0].wait(timeout=30) == 0  # gone without being told to
        with pytest.raises(WorkerError, match="one request each"):
            once.recognize([pcm])
    finally:
        pool.close()
        once.close()

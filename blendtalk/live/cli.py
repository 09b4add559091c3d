"""`python -m blendtalk live --input mic|FILE --emit stdout|ws://HOST:PORT|livelink://HOST`: frames as they are made.

    python -m blendtalk live --input assets/audio/arctic_a0009.wav --emit stdout > frames.jsonl
    python -m blendtalk live --input mic --emit ws://127.0.0.1:8765 --emotion happy --token secret
    python -m blendtalk live --input mic --emit livelink://192.168.1.20 --subject blendtalk
    python -m blendtalk live --input mic --seconds 20 --save-mp4 take.mp4 --save-csv take.csv > /dev/null

A FILE is fed at the pace of a recording (20 ms chunks). The frame format is documented in
`blendtalk.live.stream` and docs/live.md. With ws://, clients connect to ws://HOST:PORT/?token=TOKEN
(the token is printed on stderr when not given) and all receive every message. With livelink://,
each frame goes to Unreal's Live Link as a Live Link Face packet (UDP, port 11111 unless given;
`blendtalk.live.live_link`). --emit may be given more than once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def add_parser(sub, formatter_class) -> None:
    """The `live` subcommand on `sub` (the CLI's subparsers), its help laid out by `formatter_class`."""
    p = sub.add_parser("live", help="stream frames (ARKit weights, head and eyes) from a microphone or a file in real time",
                       formatter_class=formatter_class, description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="'mic' (the default input device) or an audio FILE fed in real time")
    p.add_argument("--emit", action="append", help="'stdout' (JSON lines, the default), ws://HOST:PORT (a WebSocket "
                   "server) or livelink://HOST[:PORT] (Unreal's Live Link, UDP 11111 by default); repeatable")
    p.add_argument("--subject", default="blendtalk", help="the Live Link subject name Unreal lists (with livelink://)")
    p.add_argument("--emotion", default="neutral", help="one of `python -m blendtalk emotions`")
    p.add_argument("--intensity", type=float, default=1.0, help="0..1.5 (1 = the apex)")
    p.add_argument("--lookahead", type=int, default=4, help="frames of audio after a frame that its speech window reads")
    p.add_argument("--edge-ms", type=float, default=0.0, help="a finer look-ahead: ms of one more frame's audio that the "
                   "speech window reads after its --lookahead frames (0 to 33.3)")
    p.add_argument("--no-closure-lookahead", action="store_true",
                   help="the closure rule does not wait for the next frame: 33 ms sooner, lips no longer ease a frame early")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="audio arrives in chunks this long (the microphone's blocks, "
                   "or the steps a FILE is fed in); shorter chunks wait less for the window's last sample: up to 4 ms at 10, 14 at 20")
    p.add_argument("--seconds", type=float, help="stop after this long (default: the file's end, or Ctrl-C)")
    p.add_argument("--token", help="token WebSocket clients must give (?token=); default: a random one, printed")
    p.add_argument("--allow-origin", action="append", default=[], help="browser origin allowed to connect (repeatable)")
    p.add_argument("--wait-client", action="store_true", help="with ws://, start only once a client is connected")
    p.add_argument("--save-mp4", type=Path, help="also write the take as an mp4 (audio + the rendered ARKit face) at the end")
    p.add_argument("--save-csv", type=Path, help="also write the take's ARKit curves (Live Link Face CSV) at the end")
    p.add_argument("--size", type=int, default=256, help="the take's video size in pixels (128, 256 or 512)")
    p.add_argument("--device", default="cpu", help="torch device of the models (live mode is made for the CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (one session needs about 70%% of one core; "
                   "more threads on a busy CPU only slow it down)")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    import numpy as np

    from .session import LiveConfig
    from .speech_stream import StreamConfig
    from .stream import (WebSocketBroadcast, encode, end_message, frame_message, hello_message, microphone_chunks,
                              notice_message, realtime_chunks)
    from ..pipeline import Pipeline

    from .live_link import LiveLinkSender
    from .take import MAX_TAKE_SECONDS, Take, check_mp4_path, check_size

    # Checked before the stream starts, so a bad path does not cost the take.
    StreamConfig(lookahead=args.lookahead, edge_ms=args.edge_ms)  # ValueError names a bad window before the models load
    if not 1.0 <= args.chunk_ms <= 100.0:
        raise ValueError(f"--chunk-ms must be in [1, 100] ms, got {args.chunk_ms:g}")
    if args.seconds is not None and not args.seconds > 0:
        raise ValueError(f"--seconds must be a positive number of seconds, got {args.seconds:g}; leave it out to run to the end")
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.save_mp4 is not None:
        check_mp4_path(args.save_mp4)
        check_size(args.size)
    if args.save_csv is not None:
        if args.save_csv.suffix.lower() != ".csv" or not args.save_csv.parent.is_dir() or args.save_csv.exists():
            raise ValueError(f"--save-csv must be a new .csv file in an existing folder, got {str(args.save_csv)!r}")
    targets = parse_emit(args.emit or ["stdout"])
    to_stdout = "stdout" in targets
    unreal = None
    if "livelink" in targets:
        unreal = LiveLinkSender(*targets["livelink"], subject=args.subject)
        print(f"blendtalk live: sending subject {args.subject!r} to Live Link at {unreal.address[0]}:{unreal.address[1]}",
              file=sys.stderr)
    sink = None
    if "ws" in targets:
        host, port = targets["ws"]
        sink = WebSocketBroadcast(host, port, args.token, args.allow_origin).start()
        url = f"ws://{host}:{port}/?token={sink.token}"
        if host in ("0.0.0.0", "::"):  # every interface: not an address a client can dial
            there = lan_address()
            url += f" (every interface; from another machine: ws://{there or 'THIS-MACHINE'}:{port}/?token={sink.token})"
        print(f"blendtalk live: serving {url}", file=sys.stderr)
    if args.input == "mic":
        chunks = microphone_chunks(args.chunk_ms / 1000)
    else:
        from ..speech.audio import load_audio

        path = Path(args.input)
        if not path.is_file():
            raise ValueError(f"--input must be 'mic' or an audio file; {args.input!r} is neither")
        chunks = realtime_chunks(load_audio(path, max_seconds=4 * 3600), args.chunk_ms / 1000)
    import torch

    from .session import warm_up

    torch.set_num_threads(max(1, args.threads))
    pipe = Pipeline.from_pretrained(device=args.device)
    warm_up(pipe)
    session = pipe.live(args.emotion, args.intensity, config=LiveConfig(
        lookahead=args.lookahead, edge_ms=args.edge_ms, closure_lookahead=not args.no_closure_lookahead, realtime=True))
    names = session.arkit_names
    take = Take(names, MAX_TAKE_SECONDS) if (args.save_mp4 or args.save_csv) else None

    def emit(message: dict) -> None:
        nonlocal to_stdout
        line = encode(message)
        if to_stdout:
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except BrokenPipeError:  # the reader left (`| head`): like any pipe writer, stop writing
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
                to_stdout = False
        if sink is not None:
            sink.send(line)

    hello = encode(hello_message(names, session.lookahead_seconds))
    if sink is not None:
        sink.hello = hello
        if args.wait_client:
            print("blendtalk live: waiting for a client", file=sys.stderr)
            while not sink._clients:
                time.sleep(0.05)
    emit(hello_message(names, session.lookahead_seconds))
    count = 0
    try:
        for chunk, arrived in _until_interrupted(chunks):
            received = session.received
            frames = session.push(np.asarray(chunk), arrived=arrived)
            if take is not None:
                if session.received > received:  # chunks the session dropped (a busy CPU) are not in the take
                    take.add_audio(chunk)
                take.add_frames(frames)
            for frame in frames:
                emit(frame_message(frame, names))
                if unreal is not None:
                    unreal.send(frame, names)
                count += 1
            while session.notices:
                emit(notice_message(session.received / 16000, session.notices.popleft()))
            if args.seconds is not None and session.received >= args.seconds * 16000:
                break
            if not to_stdout and sink is None and unreal is None and take is None:  # stdout's reader left, no one else listens
                return 0
        frames = session.finish()
        if take is not None:
            take.add_frames(frames)
        for frame in frames:
            emit(frame_message(frame, names))
            if unreal is not None:
                unreal.send(frame, names)
            count += 1
        emit(end_message(count))
        if take is not None and take.arkit:
            if args.save_csv is not None:
                from ..render.exports import write_arkit_csv

                write_arkit_csv(take.animation(pipe.rig), args.save_csv)
                print(f"blendtalk live: wrote {args.save_csv}", file=sys.stderr)
            if args.save_mp4 is not None:
                print(f"blendtalk live: rendering the take ({take.seconds:.1f} s) to {args.save_mp4}", file=sys.stderr)
                take.write_mp4(pipe, args.save_mp4, args.size)
                print(f"blendtalk live: wrote {args.save_mp4}", file=sys.stderr)
    finally:
        if sink is not None:
            sink.close()
        if unreal is not None:
            unreal.close()
        pipe.close()
    return 0


def parse_emit(emits: list[str]) -> dict:
    """--emit values -> {"stdout": None, "ws": (host, port), "livelink": (host, port)}; ValueError names a bad one."""
    from .live_link import PORT

    targets: dict = {}
    for emit in emits:
        kind, _, rest = emit.partition("://")
        if emit == "stdout":
            kind, where = "stdout", None
        elif kind in ("ws", "livelink") and rest:
            rest = rest.rstrip("/")
            host, colon, port = rest.rpartition(":")
            if kind == "livelink" and (not colon or rest.endswith("]")):  # no port: Live Link Face's
                host, port = rest, str(PORT)
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"--emit {kind}://HOST{':PORT' if kind == 'ws' else '[:PORT]'} needs a host and a port "
                                 f"number (1-65535), got {emit!r}")
            where = (host.strip("[]"), int(port))
        else:
            raise ValueError(f"--emit must be 'stdout', ws://HOST:PORT or livelink://HOST[:PORT], got {emit!r}")
        if kind in targets:
            raise ValueError(f"--emit {kind} is given twice; give each kind of output once")
        targets[kind] = where
    return targets


def lan_address() -> str | None:
    """This machine's IPv4 address on its default route, or None without one. Connecting a UDP
    socket only picks the route: nothing is sent."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1, never routed anywhere real
            return s.getsockname()[0]
        except OSError:
            return None


def _until_interrupted(chunks):
    """The chunks until Ctrl-C: the stream then ends as at a file's end (its take is still saved)."""
    try:
        yield from chunks
    except KeyboardInterrupt:
        print("blendtalk live: stopped", file=sys.stderr)

"""Ctrl-C held over the stretches where Python cannot unwind it cleanly: imports of compiled extensions.

A KeyboardInterrupt raised in Python code that C++ called back while torch is importing can end the
process with SIGABRT ("terminate called ... what(): KeyboardInterrupt", exit -6) instead of
unwinding (seen with `python -m blendtalk animate` interrupted 1.0 s after start). Held, the
interrupt is raised as soon as the import is done, a second or two later, and the CLI prints its one line.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

HELD = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and `kill`, which the CLI treats the same way


@contextlib.contextmanager
def held_interrupt() -> Iterator[None]:
    """Inside the block SIGINT/SIGTERM are noted, not raised; leaving it, a noted one is raised as
    KeyboardInterrupt. Off the main thread (where Python delivers no signal) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: noted.append(signum)) for sig in HELD}
    try:
        yield
    finally:
        for sig, handler in previous.items():  # None: a handler not set from Python; the default is the nearest
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if noted:
        raise KeyboardInterrupt

import logging
import os
import sys


def main() -> int:
    """`python -m blendtalk` and the `blendtalk` console script."""
    from .interrupt import held_interrupt

    try:  # Ctrl-C while numpy is still importing is an interrupt like any other: one line, 130
        with held_interrupt():
            from .cli import main as cli_main
    except KeyboardInterrupt:
        print("blendtalk: interrupted; no partial files were left", file=sys.stderr)
        return 130
    return cli_main()


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown after a run that succeeded: unloading torch and the
    OpenGL context took 0.3-0.9 s of a 10 s clip's run. Every output is written, moved into place
    and closed by then, and nothing registered at exit has work left (the phone worker has exited;
    temporary folders are removed by the writers themselves). Failures exit the usual way."""
    if code != 0:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _exit_now(main())

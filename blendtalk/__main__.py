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


if __name__ == "__main__":
    sys.exit(main())

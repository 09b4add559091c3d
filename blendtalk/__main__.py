import sys

try:  # Ctrl-C while torch and numpy are still importing is an interrupt like any other: one line, 130
    from .cli import main
except KeyboardInterrupt:
    print("blendtalk: interrupted; no partial files were left", file=sys.stderr)
    sys.exit(130)

sys.exit(main())

"""``python -m netecho``: the command-line clients."""

from netecho.cli import main

raise SystemExit(main())

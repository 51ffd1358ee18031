"""``python -m pdenas``: the ``pdenas`` command."""

from __future__ import annotations

import sys

from pdenas.cli import main

if __name__ == "__main__":
    sys.exit(main())

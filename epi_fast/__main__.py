"""`python -m epi_fast ...` is the `epi-fast` command."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())

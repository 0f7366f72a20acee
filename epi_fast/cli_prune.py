"""Moved to epi_fast.app.prune_cmd in 0.2.0 (see CHANGELOG.md); kept for one release, and
`python -m epi_fast.cli_prune` still runs `epi-fast prune`."""
import sys

if __name__ == "__main__":
    from epi_fast.app.prune_cmd import main

    sys.exit(main())
else:
    from epi_fast._compat import alias

    alias(__name__)

"""``python -m epi_fast.info``: prints ``epi_fast.info()`` as JSON."""

from .ops._info import main

if __name__ == "__main__":
    main()

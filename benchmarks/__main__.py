"""``python -m benchmarks``: see README.md in this folder."""
import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())

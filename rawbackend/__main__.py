"""``python -m rawbackend``: the same as the ``rawbackend`` command."""
import sys

from .cli import main

sys.exit(main())

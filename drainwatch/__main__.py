"""``python -m drainwatch``: the same as the ``drainwatch`` command."""

from drainwatch.cli import main

main()

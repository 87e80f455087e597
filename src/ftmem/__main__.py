"""``python -m ftmem``: the ``ftmem`` command, as ``python -m ftmem.cli`` runs it."""

from ftmem.cli import main

main()

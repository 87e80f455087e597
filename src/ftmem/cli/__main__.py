"""``python -m ftmem.cli``: the ``ftmem`` command."""

from ftmem.cli import main

main()

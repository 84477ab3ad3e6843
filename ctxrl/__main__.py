"""``python -m ctxrl``: the ``ctxrl`` command."""

from ctxrl.cli import main

main()

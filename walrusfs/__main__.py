"""``python -m walrusfs``: the same as the ``walrusfs`` command."""

from .cli import main

main()

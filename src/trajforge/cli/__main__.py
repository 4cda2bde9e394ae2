"""``python -m trajforge.cli``: every command is registered by the time the package is imported."""

from trajforge.cli import main

main()

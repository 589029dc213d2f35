"""``python -m atrous`` (and ``torchrun -m atrous``) runs the command-line interface."""

from atrous.cli import run

run()

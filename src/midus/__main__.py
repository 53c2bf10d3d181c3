"""`python -m midus ...` runs the CLI (handy under `torchrun -m midus train CONFIG`)."""

from .cli import app

app()

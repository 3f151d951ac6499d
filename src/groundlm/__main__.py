"""`python -m groundlm` runs the command line."""

from .cli import main

main()

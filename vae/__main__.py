"""`python -m vae` is the `vae` command."""

from vae.cli import main

main()

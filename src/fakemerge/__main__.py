"""`python -m fakemerge`: the command line."""

from fakemerge.cli import main

main()

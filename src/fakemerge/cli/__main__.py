"""`python -m fakemerge.cli` (what `accelerate launch -m fakemerge.cli ...` runs)."""

from fakemerge.cli import main

main()

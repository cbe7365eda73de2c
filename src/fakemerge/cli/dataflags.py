"""The dataset flags `train` and `eval` share (the fields of `fakemerge.data.options.DataOptions`), declared once."""

from __future__ import annotations

import typer

COMPRESSION = typer.Option(None, "--compression", help="c23 | c40 | raw: the level of FF++-style JSONs "
                           "(default c23; a level the file lacks is an error).")
FRAMES_PER_VIDEO = typer.Option(None, "--frames-per-video", help="Frames per video, evenly spaced (default: all "
                                "listed).")
FAMILY_MAP = typer.Option(None, "--family-map", help="YAML mapping each family to a list of label groups or "
                          "methods; DF40's methods are built in.")
PATH_MAP = typer.Option(None, "--path-map", help="OLD=NEW frame-path prefix rewrite (repeatable), e.g. DF40's "
                        "absolute cluster paths.")
ALLOW_SPLIT_OVERLAP = typer.Option(False, "--allow-split-overlap", help="Proceed although splits share frames or "
                                   "videos (the report and the model's metadata record it).")

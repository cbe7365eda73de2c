"""A record is one image of a dataset: every reader (DeepfakeBench JSON, folders, CSV) yields these."""

from __future__ import annotations

from dataclasses import dataclass

REAL = "real"


@dataclass(frozen=True)
class Record:
    path: str  # image path relative to the data root (or absolute), POSIX separators
    label: int  # 0 real, 1 fake
    family: str  # "real" for reals; the forgery family (FS, FR, EFS, FE, ... or the method's own name) for fakes
    video: str  # full relative video id (never a bare basename: same-named videos of two methods differ)
    split: str  # train | val | test
    method: str = ""  # the dataset's own name for the source: label group (`FF-FS`, `simswap_Fake`) or folder


def select(records: list[Record], split: str | None = None,
           families: list[str] | None = None) -> list[Record]:
    """Records of one split; with `families`, the reals plus the fakes whose family — or whose method's full
    name (`FF-FS`, `simswap_Fake`) — is one of them."""
    out = [r for r in records if split is None or r.split == split]
    if families is not None:
        keep = set(families)
        out = [r for r in out if r.label == 0 or r.family in keep or r.method in keep]
    return out

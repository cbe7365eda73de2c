"""How to read datasets: one options object that train, eval and the config files share.

`DataOptions` carries everything a DeepfakeBench / DF40 user has to say about their files — which
datasets (`data`, several for one evaluation), the compression level, frames per video, a family map,
path prefix rewrites and whether overlapping splits are accepted — and `read(options, splits)` reads
each dataset with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fakemerge.data.families import FamilyMap
from fakemerge.data.formats import Dataset, read_dataset
from fakemerge.data.records import Record
from fakemerge.errors import InputError


class DataOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: list[str] = Field(min_length=1)  # dataset specs: DeepfakeBench JSON, CSV manifest or folder
    root: str | None = None  # data root override (default: each dataset file's folder)
    compression: Literal["c23", "c40", "raw"] | None = None  # None: c23 where a file has levels
    frames_per_video: int | None = Field(default=None, ge=1)  # None: every listed frame
    family_map: str | None = None  # YAML {family: [label group or method, ...]}
    path_map: list[str] = []  # "OLD=NEW" frame-path prefix rewrites (first match wins)
    allow_split_overlap: bool = False

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("path_map")
    @classmethod
    def _pairs(cls, v):
        for item in v:
            if "=" not in item or not item.partition("=")[0]:
                raise ValueError(f"{item!r} is not OLD=NEW")
        return v

    def prefix_pairs(self) -> list[tuple[str, str]]:
        return [(old, new) for old, _, new in (item.partition("=") for item in self.path_map)]


def read(options: DataOptions, splits: list[str] | None) -> tuple[list[Dataset], list[str]]:
    """Every dataset of `options` for `splits`, and the warnings that concern them all (unused map names)."""
    family_map = FamilyMap.read(options.family_map)
    datasets = [read_dataset(spec, root=options.root, splits=splits, compression=options.compression,
                             family_map=family_map, path_map=options.prefix_pairs(),
                             frames_per_video=options.frames_per_video,
                             allow_split_overlap=options.allow_split_overlap)
                for spec in options.data]
    unused = family_map.unused()
    extra = [f"{family_map.source}: {', '.join(unused)} match(es) no label group of the data"] if unused else []
    return datasets, extra


def combined(datasets: list[Dataset]) -> tuple[Path, list[Record], list[str]]:
    """One root and record list for training on several datasets: paths joined to each dataset's root; the
    same frame listed by two datasets (DF40's method files share their reals) counts once."""
    if len(datasets) == 1:
        return datasets[0].root, datasets[0].records, []
    seen: dict[str, Record] = {}
    duplicates = 0
    for ds in datasets:
        for r in ds.records:
            path = str(ds.root / r.path)
            kept = seen.get(path)
            if kept is None:
                seen[path] = Record(path, r.label, r.family, str(ds.root / r.video), r.split, r.method)
            elif (kept.label, kept.split) != (r.label, r.split):
                raise InputError(f"{path}: listed as {kept.split}/{'fake' if kept.label else 'real'} and "
                                 f"{r.split}/{'fake' if r.label else 'real'} by different datasets ({ds.source})")
            else:
                duplicates += 1
    notes = [f"{duplicates} frame(s) listed by several datasets counted once"] if duplicates else []
    return Path(), list(seen.values()), notes

"""`ModelEntry`: what a results row is — a model file and how it was made — instead of a name to parse."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fakemerge.io import write_json

GROUPS = ("full", "effort", "fmsd")  # the specialists' training method (what a merge is built from)
ROLES = ("main", "default", "option", "composable", "ablation")


@dataclass(frozen=True)
class ModelEntry:
    """One model of a run. `role`: main (the specialists, joint, and each merge at its validation-selected
    setting — or at its defaults when nothing is tuned), default (a merge at the library defaults beside a
    tuned main one), option (R²M at its selected setting with one open choice changed), composable (the
    merge-then-add experiment), ablation (FMSD and optimizer variants)."""

    name: str  # unique in the run; the results row label
    path: Path
    kind: str  # specialist | joint | merged
    method: str  # training method, or the merge method of a merged model
    trained_on: tuple[str, ...]
    group: str = "full"
    role: str = "main"
    params: dict = field(default_factory=dict)  # merge parameters or training options that define it
    selection: dict | None = None  # a tuned merge: budget, evaluations used, val score, open edges, source

    def __post_init__(self):
        if self.group not in GROUPS or self.role not in ROLES:
            raise ValueError(f"{self.name}: group {self.group!r} / role {self.role!r} unknown")

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path), "trained_on": list(self.trained_on)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelEntry:
        return cls(**{**d, "path": Path(d["path"]), "trained_on": tuple(d["trained_on"])})


def save_entries(path: str | Path, entries: list[ModelEntry], root: str | Path) -> None:
    """Write the entries with model paths relative to the run folder `root` (a run can be moved)."""
    root = Path(root).resolve()
    write_json(path, [{**e.to_dict(), "path": Path(e.path).resolve().relative_to(root).as_posix()}
                      for e in entries])


def load_entries(path: str | Path) -> list[ModelEntry]:
    """The entries of a run's models.json, paths resolved against its folder."""
    path = Path(path)
    return [ModelEntry.from_dict({**d, "path": path.parent / d["path"]}) for d in json.loads(path.read_text())]


def prefix(group: str) -> str:
    """Name prefix of a group's models: '' for full fine-tuning, 'effort-' / 'fmsd-' otherwise."""
    return "" if group == "full" else f"{group}-"

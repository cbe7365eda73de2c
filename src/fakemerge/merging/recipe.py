"""Merge recipes: the mergekit-style YAML a user writes, and the same schema stored in a merged file.

```yaml
method: r2m
base: base.safetensors          # fakemerge file, HF directory or HF id
models:
  - model: specialists/fs.safetensors
  - model: specialists/fr.safetensors
parameters: {alpha: 0.6, rank_ratio: 0.1}
head: average                   # average | norm_matched
out: merged.safetensors         # optional; `-o` overrides
```
Relative paths are relative to the recipe file. A merged file stores the same dict (plus each model's content
hash and families) with paths relative to the merged file, so `merge --add NEW --from MERGED` can rebuild it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fakemerge.errors import InputError
from fakemerge.models.detector import read_meta

KEYS = {"method", "base", "models", "parameters", "head", "out"}


@dataclass
class Recipe:
    method: str
    base: str
    models: list[str]
    parameters: dict = field(default_factory=dict)
    head: str = "average"
    out: str | None = None
    hashes: list[str | None] = field(default_factory=list)  # expected content hash per model, None: unchecked

    def add(self, models: list[str | os.PathLike], source: str = "this merge") -> None:
        """Append new specialists (hash unchecked); one already in the recipe is an error, not a re-weighting."""
        known = {Path(m).resolve() for m in self.models}
        for path in models:
            if Path(path).resolve() in known:
                raise InputError(f"{path}: already part of {source}")
            known.add(Path(path).resolve())
        self.hashes = (self.hashes or [None] * len(self.models)) + [None] * len(models)
        self.models = [*self.models, *map(str, models)]

    @classmethod
    def from_dict(cls, d: object, source: str, relative_to: Path) -> Recipe:
        """Parse a recipe dict; local paths are resolved against `relative_to`."""
        if not isinstance(d, dict):
            raise InputError(f"{source}: a recipe must be a mapping with method, base and models")
        unknown = set(d) - KEYS
        if unknown:
            raise InputError(f"{source}: unknown recipe key(s) {sorted(unknown)} (allowed: {sorted(KEYS)})")
        for key in ("method", "base", "models"):
            if not d.get(key):
                raise InputError(f"{source}: recipe has no '{key}'")
        models, hashes = [], []
        for m in d["models"]:
            entry = m if isinstance(m, dict) else {"model": m}
            if not isinstance(entry.get("model"), str):
                raise InputError(f"{source}: every entry of 'models' needs a 'model' path, got {m!r}")
            models.append(str(resolve(entry["model"], relative_to)))
            hashes.append(entry.get("sha256"))
        params = d.get("parameters") or {}
        if not isinstance(params, dict):
            raise InputError(f"{source}: 'parameters' must be a mapping")
        base = str(d["base"])
        local = resolve(base, relative_to)
        return cls(method=str(d["method"]), base=str(local) if local.exists() else base, models=models,
                   parameters=dict(params), head=str(d.get("head") or "average"),
                   out=str(resolve(d["out"], relative_to)) if d.get("out") else None, hashes=hashes)


def recipe_from_args(inputs: list[str], method: str | None = None, base: str | None = None,
                     add: list[str] | None = None, from_: str | os.PathLike | None = None,
                     params: dict | None = None, head: str | None = None,
                     out: str | os.PathLike | None = None) -> Recipe:
    """One Recipe from whichever form a command line used: specialist files with `method` and `base`, one
    recipe .yaml, or `from_` (a merged file) with new specialists in `add`.

    Precedence: what the command line gives wins over the recipe file, which wins over the recipe stored in
    `from_`. A new `method` drops the stored parameters (they belong to the old method); a `base` given with
    `from_` replaces the stored path (a moved base: every specialist's recorded base hash still has to match).
    """
    add = list(add or [])
    new = [*add, *inputs]
    if from_ is not None:
        if not new:
            raise InputError(f"--from {from_}: name the new specialist(s) with --add NEW")
        recipe = recipe_from_merged(from_)
    elif len(inputs) == 1 and Path(inputs[0]).suffix in (".yaml", ".yml"):
        recipe, new = load_recipe(inputs[0]), add
    else:
        if not (method and base and new):
            raise InputError("merge: give --method, --base and specialist files, a recipe .yaml, "
                             "or --add NEW --from MERGED")
        recipe = Recipe(method=method, base=base, models=[])
    if method and method != recipe.method:
        recipe.method, recipe.parameters = method, {}
    recipe.base = base or recipe.base
    recipe.add(new, str(from_) if from_ else "this merge")
    recipe.parameters = {**recipe.parameters, **(params or {})}
    recipe.head = head or recipe.head
    recipe.out = str(out) if out else recipe.out
    if not recipe.out:
        raise InputError("merge: no output file (give -o OUT.safetensors or 'out:' in the recipe)")
    return recipe


def resolve(path: str, relative_to: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else relative_to / p


def portable(path: str | os.PathLike, relative_to: Path) -> str:
    """A local path relative to `relative_to` (so a moved folder still works); anything else as given."""
    p = Path(path)
    if not p.exists():
        return str(path)  # a Hugging Face id
    return os.path.relpath(p.resolve(), relative_to.resolve())


def load_recipe(path: str | os.PathLike) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: recipe file not found")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return Recipe.from_dict(d, str(path), path.parent)


def recipe_from_merged(path: str | os.PathLike) -> Recipe:
    """The recipe stored in a merged model file, paths resolved against the file's folder."""
    meta = read_meta(path)
    if meta.kind != "merged" or not meta.recipe:
        raise InputError(f"{path}: not a merged model (no merge recipe in its metadata)")
    recipe = Recipe.from_dict(meta.recipe, str(path), Path(path).parent)
    recipe.out = None
    return recipe

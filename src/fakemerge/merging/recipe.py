"""Merge recipes: the YAML a user writes (fakemerge's or mergekit's spelling), and the same schema stored in a
merged file.

```yaml
method: ties                    # or mergekit's `merge_method:`; fakemerge's method names and semantics
base: base.safetensors          # or `base_model:`; fakemerge file, HF directory or HF id
models:
  - model: specialists/fs.safetensors
  - model: specialists/fr.safetensors
    parameters: {weight: 0.5, density: 0.3}   # per model, where the method defines them
parameters: {scaling: 0.3}      # FusionBench's names too: scaling_factor, threshold, sparsity_ratio, ...
dtype: bfloat16                 # of the output (default: the base's)
device: cpu                     # cpu (default) | cuda | auto: where the arithmetic runs (not stored)
head: average                   # average | norm_matched
out: merged.safetensors         # optional; `-o` overrides
```
mergekit users list the base among `models` too: that entry is recognised as the base (it may not carry
parameters; fakemerge's methods never merge the base itself) and the recipe notes it. Relative paths are
relative to the recipe file. Any key not listed here is an error. A merged file stores the same dict (plus
each model's content hash and families, and the formula applied) with paths relative to the merged file, so
`merge --add NEW --from MERGED` can rebuild it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, ValidationError, model_validator

from fakemerge.config import first_error
from fakemerge.errors import InputError
from fakemerge.models.detector import read_meta

DTYPES = ("float32", "float16", "bfloat16", "float64")
MERGEKIT_ONLY = {"linear": "average (with per-model weights)", "dare_linear": "dare", "dare_ties": "ties or dare",
                 "breadcrumbs": None, "della": None, "slerp": None, "model_stock": None, "passthrough": None}
Number = StrictFloat | StrictInt
UNION_BRANCHES = {"_Model", "str", "float", "int"}  # names pydantic puts into error locations of union fields


class _ModelParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: Number | None = None
    density: Number | None = None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: _ModelParameters = _ModelParameters()
    sha256: str | None = None  # stored recipes: the content hash to check
    families: list[str] | None = None  # stored recipes: what the model was trained on


class _RecipeFile(BaseModel):
    """A recipe as written: both spellings accepted, one of each pair required."""

    model_config = ConfigDict(extra="forbid")
    method: str | None = None
    merge_method: str | None = None
    base: str | None = None
    base_model: str | None = None
    models: list[_Model | str]
    parameters: dict[str, Any] = {}
    head: Literal["average", "norm_matched"] = "average"
    dtype: Literal[DTYPES] | None = None  # type: ignore[valid-type]
    device: str = "cpu"
    out: str | None = None
    formula: str | None = None  # stored recipes: what was applied (recomputed by every merge)

    @model_validator(mode="after")
    def _one_spelling(self):
        for ours, theirs in (("method", "merge_method"), ("base", "base_model")):
            given = [k for k in (ours, theirs) if getattr(self, k) is not None]
            if len(given) != 1:
                raise ValueError(f"give exactly one of '{ours}' and '{theirs}' (got {given or 'neither'})")
        if not self.models:
            raise ValueError("'models' lists no specialist")
        return self


@dataclass
class Recipe:
    """What a merge needs: per model its path, and where given its expected content hash, weight, density."""

    method: str
    base: str
    models: list[str]
    parameters: dict = field(default_factory=dict)
    head: str = "average"
    out: str | None = None
    hashes: list[str | None] = field(default_factory=list)  # expected content hash per model, None: unchecked
    weights: list[float | None] = field(default_factory=list)  # per model, None: 1
    densities: list[float | None] = field(default_factory=list)  # per model, None: the method's own
    dtype: str | None = None  # of the output; None: the base's
    device: str = "cpu"  # where the arithmetic runs: cpu | cuda[:i] | auto (results agree within parity)
    notes: list[str] = field(default_factory=list)  # how mergekit spellings were read

    def per_model(self, name: str) -> list:
        values = getattr(self, name)
        return values if values else [None] * len(self.models)

    def add(self, models: list[str | os.PathLike], source: str = "this merge") -> None:
        """Append new specialists (hash unchecked); one already in the recipe is an error, not a re-weighting."""
        known = {Path(m).resolve() for m in self.models}
        for path in models:
            if Path(path).resolve() in known:
                raise InputError(f"{path}: already part of {source}")
            known.add(Path(path).resolve())
        new = [None] * len(models)
        self.hashes, self.weights, self.densities = (self.per_model(k) + new for k in ("hashes", "weights",
                                                                                         "densities"))
        self.models = [*self.models, *map(str, models)]

    def stored(self, out_dir: Path, hashes: list[str], families: list[list[str]], parameters: dict,
               formula: str) -> dict:
        """The recipe as a merged file records it (paths relative to the file's folder)."""
        models = []
        for path, h, fam, w, d in zip(self.models, hashes, families, self.per_model("weights"),
                                      self.per_model("densities"), strict=True):
            given = {k: v for k, v in (("weight", w), ("density", d)) if v is not None}
            models.append({"model": portable(path, out_dir), "sha256": h, "families": fam,
                           **({"parameters": given} if given else {})})
        return {"method": self.method, "base": portable(self.base, out_dir), "models": models,
                "parameters": parameters, "head": self.head, "dtype": self.dtype, "formula": formula}

    @classmethod
    def from_dict(cls, d: object, source: str, relative_to: Path) -> Recipe:
        """Parse a recipe dict (either spelling); local paths are resolved against `relative_to`."""
        if not isinstance(d, dict):
            raise InputError(f"{source}: a recipe must be a mapping with method, base and models")
        try:
            r = _RecipeFile(**d)
        except ValidationError as e:
            where, msg = first_error(e, "recipe")
            where = ".".join(p for p in where.split(".") if p not in UNION_BRANCHES)  # pydantic's, not the user's
            raise InputError(f"{source}: {where}: {msg.removeprefix('Value error, ')}") from None
        method = r.method or r.merge_method
        _check_method(method, source)
        written = str(r.base or r.base_model)
        local = resolve(written, relative_to)
        base = str(local) if local.exists() else written
        recipe = cls(method=method, base=base, models=[], parameters=dict(r.parameters), head=r.head,
                     out=str(resolve(r.out, relative_to)) if r.out else None, dtype=r.dtype, device=r.device)
        for entry in r.models:
            m = entry if isinstance(entry, _Model) else _Model(model=entry)
            path = resolve(m.model, relative_to)
            if m.model == written or (path.exists() and local.exists() and path.resolve() == local.resolve()):
                if m.parameters.weight is not None or m.parameters.density is not None:
                    raise InputError(f"{source}: the base {m.model} is listed among models with parameters; "
                                     f"fakemerge's {method} never merges the base itself (drop its parameters)")
                recipe.notes.append(f"{m.model} is listed among models: used as the base, not merged")
                continue
            recipe.models.append(str(path))
            recipe.hashes.append(m.sha256)
            recipe.weights.append(m.parameters.weight)
            recipe.densities.append(m.parameters.density)
        if not recipe.models:
            raise InputError(f"{source}: 'models' lists only the base; nothing to merge")
        return recipe


def _check_method(method: str, source: str) -> None:
    from fakemerge.merging import METHODS

    if method in METHODS:
        return
    hint = MERGEKIT_ONLY.get(method, "")
    hint = f"; mergekit's {method} is fakemerge's {hint}" if hint else \
        (f"; mergekit's {method} has no fakemerge counterpart" if method in MERGEKIT_ONLY else "")
    raise InputError(f"{source}: unknown merge method {method!r} (fakemerge's methods: {', '.join(METHODS)}{hint})")


def recipe_from_args(inputs: list[str], method: str | None = None, base: str | None = None,
                     add: list[str] | None = None, from_: str | os.PathLike | None = None,
                     params: dict | None = None, head: str | None = None,
                     out: str | os.PathLike | None = None, dtype: str | None = None,
                     device: str | None = None) -> Recipe:
    """One Recipe from whichever form a command line used: specialist files with `method` and `base`, one
    recipe .yaml, or `from_` (a merged file) with new specialists in `add`.

    Precedence: what the command line gives wins over the recipe file, which wins over the recipe stored in
    `from_`. A new `method` drops the stored parameters and per-model weights and densities (they belong to
    the old method); a `base` given with `from_` replaces the stored path (a moved base: every specialist's
    recorded base hash still has to match).
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
        recipe.method, recipe.parameters, recipe.weights, recipe.densities = method, {}, [], []
    recipe.base = base or recipe.base
    recipe.add(new, str(from_) if from_ else "this merge")
    recipe.parameters = {**recipe.parameters, **(params or {})}
    recipe.head = head or recipe.head
    recipe.out = str(out) if out else recipe.out
    if dtype is not None and dtype not in DTYPES:
        raise InputError(f"--dtype {dtype}: not one of {', '.join(DTYPES)}")
    recipe.dtype = dtype or recipe.dtype
    recipe.device = device or recipe.device
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

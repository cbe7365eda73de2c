"""`merge_files`: a recipe's specialist files in, one merged detector file out — validated, streamed, atomic.

Order of work: open everything lazily and check keys/shapes/dtypes/heads/preprocessing from the headers
(cheap); stream the method's output tensor by tensor into the file, the inputs hashed (`scan.py`) and checked
for NaN/Inf (through each tensor's Gram) as the merge reads them, so every input is read once per pass of the
method and never just to hash it; refuse a specialist of another base or a changed one (unless `force`) as
soon as every input is hashed; merge the heads; write the metadata (recipe with every input's content hash,
the formula, the method's diagnostics, outlier warnings from its task-vector norms and cosines) and the
optional report. A refusal or a crash leaves no output file. The specialists' canonical order and the seeds of
randomized steps come from a content fingerprint each: the sha256 of its head (known before any pass; when two
heads are equal, of all its tensors, at the cost of one extra read).

Heads: the specialists' heads were trained from different random heads, so they have no common base and
task-vector methods do not apply to them. `average` (the R²M paper's choice) is the default;
`norm_matched` rescales each head to the mean head norm first, so one head with large logits cannot dominate.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fakemerge.errors import InputError
from fakemerge.io import atomic_path
from fakemerge.io.safetensors import LazyState, SafetensorsWriter
from fakemerge.keys import HEAD_KEYS
from fakemerge.merging.recipe import Recipe, recipe_from_merged
from fakemerge.merging.report import jsonable, outlier_warnings, write_merge_report
from fakemerge.merging.scan import Scan, SortedState
from fakemerge.models.detector import ModelMeta, read_meta
from fakemerge.models.loading import open_source
from fakemerge.models.preprocessing import common_preprocessing
from fakemerge.progress import Progress, silent

HEAD_MODES = ("average", "norm_matched")
Layout = dict[str, tuple[torch.dtype, tuple[int, ...]]]


@dataclass
class Base:
    """The pretrained backbone every specialist started from, as a mapping read lazily where possible."""

    state: Mapping[str, torch.Tensor]
    id: str  # what to record as base_id
    config: dict

    def layout(self) -> Layout:
        if isinstance(self.state, LazyState):
            return {k: self.state.spec(k) for k in self.state}
        return {k: (t.dtype, tuple(t.shape)) for k, t in self.state.items()}


def open_base(spec: str | os.PathLike) -> Base:
    """Any base the one loader opens (fakemerge file and HF directory lazily, an HF id loaded)."""
    source = open_source(spec)
    return Base(source.state, source.id, source.config)


def open_specialist(path: str | os.PathLike,
                    layout: Layout) -> tuple[LazyState, ModelMeta, dict[str, torch.Tensor]]:
    """Open a specialist lazily and check it against the base layout; the error names the file and tensor."""
    meta = read_meta(path)
    state = LazyState(path)
    missing = [k for k in layout if k not in state]
    if missing:
        raise InputError(f"{path}: tensor {missing[0]} is missing ({len(missing)} base tensor(s) absent)")
    extra = [k for k in state if k not in layout]
    if extra:
        raise InputError(f"{path}: unexpected tensor {extra[0]} (not in the base; {len(extra)} in all)")
    for k, (dtype, shape) in layout.items():
        got = state.spec(k)
        if got[1] != shape:
            raise InputError(f"{path}: tensor {k} has shape {list(got[1])}, the base has {list(shape)}")
        if got[0] != dtype:
            raise InputError(f"{path}: tensor {k} has dtype {got[0]}, the base has {dtype}")
    head = {k: state.extra(k) for k in HEAD_KEYS}
    absent = [k for k, v in head.items() if v is None]
    if absent:
        raise InputError(f"{path}: tensor {absent[0]} is missing (a specialist needs a head)")
    return state, meta, head


def merge_heads(heads: list[dict[str, torch.Tensor]], how: str) -> dict[str, torch.Tensor]:
    """Combine the specialists' linear heads (see the module docstring for why not with the method)."""
    if how not in HEAD_MODES:
        raise InputError(f"head={how}: unknown head merge (choose from {', '.join(HEAD_MODES)})")
    scale = [1.0] * len(heads)
    if how == "norm_matched":
        norms = [torch.cat([h["head.weight"].flatten(), h["head.bias"]]).double().norm().item()
                 for h in heads]
        mean = sum(norms) / len(norms)
        scale = [mean / n if n > 0 else 1.0 for n in norms]
    merged = {}
    for k in HEAD_KEYS:
        total = sum(s * h[k].double() for s, h in zip(scale, heads, strict=True))
        merged[k] = (total / len(heads)).to(heads[0][k].dtype)
    return merged


@dataclass
class MergeResult:
    out: Path
    meta: ModelMeta
    norms: list[float]  # ‖τi‖ over the backbone
    cosine: list[list[float]]  # task-vector cosine similarities
    diagnostics: dict  # what the method reported (JSON-able)
    warnings: list[str] = field(default_factory=list)
    report_files: list[Path] = field(default_factory=list)


def merge_files(recipe: Recipe, out: str | os.PathLike | None = None, *,
                report_dir: str | os.PathLike | None = None, force: bool = False,
                progress: Progress = silent) -> MergeResult:
    """Merge the recipe's specialist files into one detector file (`out`, else `recipe.out`); peak memory ≈
    one tensor per input + the method's needs.

    `recipe.hashes` (from a stored recipe) must equal each specialist's content hash unless `force`; `force`
    also accepts specialists whose recorded base hash differs from the base's. Specialists made with
    different input preprocessing are refused: their merge would have none that suits it.
    """
    from fakemerge.merging import merge_iter, validate

    if not recipe.models:
        raise InputError("merge: no specialist models given")
    if recipe.head not in HEAD_MODES:
        raise InputError(f"head={recipe.head}: unknown head merge (choose from {', '.join(HEAD_MODES)})")
    if out is None and recipe.out is None:
        raise InputError("merge: no output file given")
    weights, densities = recipe.per_model("weights"), recipe.per_model("densities")
    params, _, _ = validate(recipe.method, recipe.parameters, len(recipe.models), weights, densities)
    out = Path(out if out is not None else recipe.out)
    names = [str(p) for p in recipe.models]
    b = open_base(recipe.base)
    layout = b.layout()
    states, metas, heads = (list(x) for x in zip(*[open_specialist(p, layout) for p in names], strict=True))
    preprocessing = _common_preprocessing(names, metas, heads)
    scan = Scan([b.state, *states], [None, *heads],
                lambda hashes: _check_provenance(names, metas, hashes, recipe.per_model("hashes"), force))
    fingerprints = scan.head_fingerprints()
    if len(set(fingerprints)) < len(fingerprints):  # two specialists with one head: order them by all content
        fingerprints = scan.finish()[1:]
    run = merge_iter(recipe.method, SortedState(b.state), states, weights=weights, densities=densities,
                     progress=progress, fingerprints=fingerprints, names=names, on_read=scan.record,
                     device=recipe.device, **params)
    meta = ModelMeta(kind="merged", method=recipe.method, families=list(dict.fromkeys(f for m in metas
                                                                                       for f in m.families)),
                     base_id=b.id, backbone_config=b.config, preprocessing=preprocessing)
    out_layout = {**layout, **{k: (heads[0][k].dtype, tuple(heads[0][k].shape)) for k in HEAD_KEYS}}
    if recipe.dtype is not None:
        dtype = getattr(torch, recipe.dtype)
        out_layout = {k: (dtype if d.is_floating_point else d, shape) for k, (d, shape) in out_layout.items()}
    with atomic_path(out) as tmp, SafetensorsWriter(tmp, out_layout, meta.to_header()) as writer, \
            ThreadPoolExecutor(1, thread_name_prefix="merge-write") as behind, contextlib.closing(scan):
        writing = None  # one tensor is written while the next is merged
        for key, tensor in run:
            if writing is not None:
                writing.result()
            writing = behind.submit(writer.write, key, tensor)
        if writing is not None:
            writing.result()
        for k, v in merge_heads(heads, recipe.head).items():
            writer.write(k, v)
        hashes = scan.finish()  # every input read once; a wrong base or a changed specialist raises here
        diagnostics = jsonable(run.diagnostics)
        warnings = outlier_warnings(names, run.gram)
        meta.base_hash = hashes[0]
        meta.recipe = recipe.stored(out.parent, hashes[1:], [m.families for m in metas], params, run.formula)
        meta.extra = {"task_norms": diagnostics["task_norms"], "task_cosine": diagnostics["task_cosine"],
                      "warnings": warnings, "diagnostics": diagnostics}
        writer.close(meta.to_header())

    result = MergeResult(out, meta, diagnostics["task_norms"], diagnostics["task_cosine"], diagnostics, warnings)
    if report_dir is not None:
        result.report_files = write_merge_report(report_dir, result, names)
    return result


def _common_preprocessing(names: list[str], metas: list[ModelMeta], heads: list[dict[str, torch.Tensor]]) -> dict:
    """The specialists' one input preprocessing (refused when they differ), after checking their heads agree."""
    for name, h in zip(names[1:], heads[1:], strict=True):
        for k in HEAD_KEYS:
            if h[k].shape != heads[0][k].shape:
                raise InputError(f"{name}: tensor {k} has shape {list(h[k].shape)}, "
                                 f"{names[0]} has {list(heads[0][k].shape)}")
    return common_preprocessing([(n, m.preprocessing_for(n)) for n, m in zip(names, metas, strict=True)]).to_dict()


def _check_provenance(names: list[str], metas: list[ModelMeta], hashes: list[str], expected: list[str | None],
                      force: bool) -> None:
    """Every specialist was fine-tuned from this base (hashes[0]) and, where a recipe recorded its hash
    (hashes[1:]), is unchanged; InputError unless `force`."""
    if force:
        return
    base_hash = hashes[0]
    for name, meta in zip(names, metas, strict=True):
        if meta.base_hash != base_hash:
            why = "records no base hash" if meta.base_hash is None else "was fine-tuned from a different base"
            raise InputError(f"{name}: {why} (base content hash {base_hash[:12]}…; --force to merge anyway)")
    for name, want, got in zip(names, expected, hashes[1:], strict=True):
        if want is not None and want != got:
            raise InputError(f"{name}: content changed since the recipe was recorded (sha256 {got[:12]}… ≠ "
                             f"{want[:12]}…; --force to merge anyway)")


def add_specialists(merged: str | os.PathLike, new: list[str | os.PathLike], out: str | os.PathLike, *,
                    force: bool = False, report_dir: str | os.PathLike | None = None,
                    progress: Progress = silent) -> MergeResult:
    """The composable re-merge: MERGED's stored recipe (same base, method, parameters) plus NEW specialists.

    Old specialists are never retrained; their recorded content hashes must still match unless `force`.
    """
    recipe = recipe_from_merged(merged)
    recipe.add(new, f"the merge {merged}")
    return merge_files(recipe, out, report_dir=report_dir, force=force, progress=progress)

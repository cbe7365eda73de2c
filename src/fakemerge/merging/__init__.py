"""Training-free merging of specialists fine-tuned from one base: R²M and the standard baselines.

`merge(method, base, specialists, **params)` returns the merged backbone state dict; `merge_iter` yields it
one tensor at a time (then its diagnostics; its `formula` at once), touching its inputs only through
`keys()` / `__getitem__`, so lazy mappings that read one tensor per access keep memory at the base plus a
few tensors. Both take per-model `weights` / `densities` where the method defines them, and `device`
(cpu | cuda | auto). Keys may be spelled with or without `vision_model.`; results use the base's spelling.
Heads are not merged here (the file-level engine in `engine.py` does it, from a `recipe.Recipe`). A method is
one decorated function (`registry.py`); `METHODS` lists them all.
"""

# Each module registers its methods, in this order (the order of METHODS: baselines first, R²M last).
from fakemerge.merging import elementwise, svd_methods  # noqa: F401  # isort: skip
from fakemerge.merging import r2m  # noqa: F401  # isort: skip
from fakemerge.merging.registry import (
    METHODS,
    MergeMethod,
    merge,
    merge_iter,
    method_defaults,
    resolve_params,
    validate,
)

__all__ = ["METHODS", "MergeMethod", "merge", "merge_iter", "method_defaults", "resolve_params", "validate"]

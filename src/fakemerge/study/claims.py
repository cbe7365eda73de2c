"""The paper's three empirical claims, each tested on the runs and reported as holding or not, plus
FMSD vs full fine-tuning. Every sentence is computed from the numbers, its direction included.

1. "Averaging keeps the Real side while attenuating Fake cues": per seed and specialist i, the shift of
   the mean logit log(p / (1 − p)) from specialist i to the plain average on the test reals (Δreal) and on
   specialist i's own fakes (Δfake), averaged over the specialists. Holds when Δfake < 0 (fakes look more
   real after averaging) and the fake side moves more than the real side (|Δfake| − |Δreal| > 0), each with
   its 95 % interval over seeds on the right side of 0.
2. "R²M beats joint training and the baselines": paired differences of mean seen-family test AUC, R²M at
   its validation-selected setting against the strongest baseline (the other merge method with the highest
   seed-mean, chosen on test as the hardest opponent: this can only make R²M look worse), plain averaging,
   and the joint model. Holds when all three intervals are above 0.
3. "Re-merging with a new specialist needs no retraining": R²M(FS, FR, EFS) plus FE through the stored
   recipe, against R²M on the four at once: holds when the weights are bit-identical and FE's test AUC rises
   (interval above 0) — the new family is learned without touching the old specialists.
Verdicts: holds (every interval on the claimed side of 0), does not hold (one on the other side), otherwise
not resolved; with one seed nothing is resolved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fakemerge.evaluation.stats import Summary, compare, direction, interval, paired, summarize
from fakemerge.study.entries import prefix
from fakemerge.study.seeds import Run, across

EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def groups(runs: Sequence[Run]) -> list[str]:
    return list(dict.fromkeys(e.group for e in runs[0].entries.values() if e.kind == "merged"))


def main_merges(run: Run, group: str) -> list[str]:
    return run.names(lambda e: e.kind == "merged" and e.role == "main" and e.group == group)


def ranked(runs: Sequence[Run], names: Sequence[str]) -> list[tuple[str, Summary]]:
    """Names by seed-mean mean-seen test AUC, best first."""
    scored = [(n, across(runs, lambda r, n=n: r.mean(n))) for n in names]
    return sorted(scored, key=lambda x: -x[1].mean if x[1].n else math.inf)


def score_shifts(run: Run, group: str) -> dict | None:
    """Mean logit shifts from each specialist to the plain average, on reals and on its own fakes."""
    avg = f"{prefix(group)}average"
    specs = run.names(lambda e: e.kind == "specialist" and e.role == "main" and e.group == group)
    if avg not in run.entries or not specs:
        return None
    pa = run.predictions(avg)
    real_shift, fake_shift, acc_real, acc_fake = [], [], [], []
    for s in specs:
        fam = run.entries[s].trained_on[0]
        ps = run.predictions(s)
        if not np.array_equal(ps["path"], pa["path"]):
            raise ValueError(f"{run.folder}: {s} and {avg} scored different test images")
        real, fake = pa["label"] == 0, (pa["label"] == 1) & (pa["family"] == fam)
        la, ls = _logit(pa["score"]), _logit(ps["score"])
        real_shift.append(float(la[real].mean() - ls[real].mean()))
        fake_shift.append(float(la[fake].mean() - ls[fake].mean()))
        acc_real.append(float((pa["score"][real] < 0.5).mean() - (ps["score"][real] < 0.5).mean()))
        acc_fake.append(float((pa["score"][fake] >= 0.5).mean() - (ps["score"][fake] >= 0.5).mean()))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    r, f = mean(real_shift), mean(fake_shift)
    return {"real": r, "fake": f, "margin": abs(f) - abs(r), "acc_real": mean(acc_real),
            "acc_fake": mean(acc_fake)}


OPPOSITE = {"above": "below", "below": "above"}


def verdict(found: Sequence[tuple[str, Summary]]) -> str:
    """The claim's verdict from (wanted direction, paired difference) pairs: holds when every interval is on
    the wanted side of 0, does not hold when one is on the other side, otherwise not resolved."""
    dirs = [(want, direction(diff), diff) for want, diff in found]
    if not dirs or any(d == "missing" for _, d, _ in dirs):
        return "is **not measured**"
    if all(d == want for want, d, _ in dirs):
        return "**holds**"
    if any(d == OPPOSITE[want] for want, d, _ in dirs):
        return "**does not hold**"
    if all(d == "one seed" for _, d, _ in dirs):
        agree = sum((diff.mean > 0) == (want == "above") and diff.mean != 0 for want, _, diff in dirs)
        return f"is **not resolved** (one seed, no interval; {agree} of {len(dirs)} differences point the claimed way)"
    part = sum(d == want for want, d, _ in dirs)
    return f"is **not resolved** ({part} of {len(dirs)} intervals on the claimed side, the rest contain 0)"


def claim_averaging(runs: Sequence[Run], group: str) -> list[str]:
    shifts = [score_shifts(r, group) for r in runs]
    shifts = [s for s in shifts if s is not None]
    if not shifts:
        return [f"- Claim 1 ({group}): not measured (no plain average or no specialists)."]
    real, fake, margin = (summarize([s[k] for s in shifts]) for k in ("real", "fake", "margin"))
    acc_real, acc_fake = (summarize([s[k] for s in shifts]) for k in ("acc_real", "acc_fake"))
    found = verdict([("below", fake), ("above", margin)])
    return [f"- Claim 1, averaging keeps the Real side while attenuating Fake cues ({group} specialists): "
            f"{found}. From each specialist to the plain average, the mean logit moves by "
            f"Δfake = {interval(fake)} on the specialist's own fakes and by Δreal = {interval(real)} on the "
            f"reals; |Δfake| − |Δreal| = {interval(margin)}. At P(fake) ≥ 0.5 the average calls "
            f"{_pts(acc_fake)} points {'more' if acc_fake.mean > 0 else 'fewer'} of those fakes fake and "
            f"{_pts(acc_real)} points {'more' if acc_real.mean > 0 else 'fewer'} of the reals real."]


def _pts(s: Summary) -> str:
    return f"{abs(100 * s.mean):.1f}" if s.n else "n/a"


def claim_r2m(runs: Sequence[Run], group: str) -> list[str]:
    p = prefix(group)
    names = main_merges(runs[0], group)
    r2m = f"{p}r2m"
    if r2m not in names:
        return [f"- Claim 2 ({group}): not measured (no R²M merge)."]
    order = ranked(runs, names)
    baselines = [n for n, _ in order if n != r2m]
    best = baselines[0] if baselines else None
    opponents = [(best, "the strongest baseline"), (f"{p}average", "plain averaging"), ("joint", "joint training")]
    lines, found = [], []
    for name, what in opponents:
        if name is None or name not in runs[0].entries:
            continue
        diff = paired([r.mean(r2m) for r in runs], [r.mean(name) for r in runs])
        found.append(("above", diff))
        lines.append(f"  - vs {what} ({name}): {compare(r2m, name, diff)}")
    rank = [n for n, _ in order].index(r2m) + 1
    return [f"- Claim 2, R²M beats joint training and the baselines ({group} specialists): {verdict(found)}. R²M "
            f"ranks {rank} of {len(order)} merges by seed-mean test AUC.", *lines]


def claim_composable(runs: Sequence[Run], group: str) -> list[str]:
    from fakemerge.io.safetensors import LazyState, tensors_sha256

    p = prefix(group)
    three, plus, full = f"{p}r2m(FS,FR,EFS)", f"{p}r2m(FS,FR,EFS)+FE", f"{p}r2m"
    if plus not in runs[0].entries:
        return [f"- Claim 3 ({group}): not measured."]
    identical = all(tensors_sha256(LazyState(r.entries[plus].path)) == tensors_sha256(LazyState(r.entries[full].path))
                    for r in runs)
    gap = max(abs((r.value(plus, f) or 0) - (r.value(full, f) or 0)) for r in runs for f in r.families())
    fe = paired([r.value(plus, "FE") for r in runs], [r.value(three, "FE") for r in runs])
    old = paired([_mean([r.value(plus, f) for f in ("FS", "FR", "EFS")]) for r in runs],
                 [_mean([r.value(three, f) for f in ("FS", "FR", "EFS")]) for r in runs])
    same = ("bit-identical weights to" if identical else f"weights that differ from (largest AUC gap {gap:.4f})")
    found = "**does not hold** (the re-merge is not exact)" if not identical else verdict([("above", fe)])
    return [f"- Claim 3, re-merging with a new specialist needs no retraining ({group} specialists): {found}. "
            f"Adding FE to the stored recipe of {three} gives {same} merging all four at once (no specialist "
            f"retrained); what the re-merge buys, FE's test AUC, changes by {interval(fe)} (the claim needs this "
            f"above 0), the old families' mean by {interval(old)}."]


def _mean(values: list) -> float | None:
    ok = [v for v in values if v is not None]
    return sum(ok) / len(ok) if ok else None


def fmsd_vs_full(runs: Sequence[Run]) -> list[str]:
    """FMSD specialists against full fine-tuning: own family, other seen families, unseen, and merged."""
    from fakemerge.lab.families import SEEN_FAMILIES

    if "fmsd-FS" not in runs[0].entries:
        return []

    def own(r: Run, p: str):
        return _mean([r.value(f"{p}{f}", f) for f in SEEN_FAMILIES])

    def other(r: Run, p: str):
        return _mean([r.value(f"{p}{f}", g) for f in SEEN_FAMILIES for g in SEEN_FAMILIES if g != f])

    def unseen(r: Run, p: str):
        return _mean([r.mean(f"{p}{f}", False) for f in SEEN_FAMILIES])

    lines = ["- FMSD vs full fine-tuning (the same four families, the same seeds):"]
    for label, fn in (("own-family AUC", own), ("AUC on the other seen families", other),
                      ("AUC on the unseen families", unseen)):
        diff = paired([fn(r, "fmsd-") for r in runs], [fn(r, "") for r in runs])
        lines.append(f"  - {label}: {compare('FMSD specialists', 'full specialists', diff, label)}")
    diff = paired([r.mean("fmsd-r2m") for r in runs], [r.mean("r2m") for r in runs])
    lines.append(f"  - merged by R²M: {compare('R²M of FMSD specialists', 'R²M of full specialists', diff)}")
    return lines

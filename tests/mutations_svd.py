"""Removes or changes one step of TSV-M, Iso-C or Iso-CTS at a time and checks that the merge tests fail.

Not a test itself (pytest does not collect it); it edits src/fakemerge/merging/svd_methods.py in place and
restores it after each mutant:
    PYTHONPATH=src python tests/mutations_svd.py
Prints one line per mutant (caught by a failing test, or MISSED) and exits 1 if any was missed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "src" / "fakemerge" / "merging" / "svd_methods.py"
TESTS = ["tests/test_merge_parity.py", "tests/test_merge_methods.py"]

MUTANTS = {  # name: (original text, replacement); each original must occur exactly once
    "tsv: keep all triplets of every task": ("r = int(min(shape) * (1 / len(taus)))", "r = min(shape)"),
    "tsv: one triplet too few per task": ("r = int(min(shape) * (1 / len(taus)))",
                                          "r = max(0, int(min(shape) * (1 / len(taus))) - 1)"),
    "tsv: no polar factor of U": ("u = polar(torch.cat(us, 1), low, noise)", "u = torch.cat(us, 1)"),
    "tsv: no polar factor of Vᵀ": ("vh = polar(torch.cat(vhs, 0), low, noise)", "vh = torch.cat(vhs, 0)"),
    "tsv: flattened spectrum": ("return alpha * ((u * sv) @ vh)", "return alpha * ((u * sv.mean()) @ vh)"),
    "tsv: alpha not applied to 2-D": ("return alpha * ((u * sv) @ vh)", "return (u * sv) @ vh"),
    "tsv: other tensors not averaged": ("    if taus.ndim != 3:\n        return alpha * taus.mean(0)\n    shape",
                                        "    if taus.ndim != 3:\n        return alpha * taus.sum(0)\n    shape"),
    "tsv: low-rank branch never taken": ("low = lowrank == \"auto\" and min(ranks) < r", "low = False"),
    "tsv: no per-task rank cap": ("keep = [min(r, rank) if low else r for rank in ranks]",
                                  "keep = [r for rank in ranks]"),
    "tsv: polar never at rank": ("u = polar(torch.cat(us, 1), low, noise)", "u = polar(torch.cat(us, 1), False)"),
    "tsv: polar rank without the vectors' noise": ("u = polar(torch.cat(us, 1), low, noise)",
                                                   "u = polar(torch.cat(us, 1), low)"),
    "tsv: no noise floor": ("ranks = [numerical_rank(sv, shape, floor) for _, sv, _ in svds]",
                            "ranks = [numerical_rank(sv, shape) for _, sv, _ in svds]"),
    "iso_c: spectrum not flattened": ("delta = sv.mean() * (u @ vh) if", "delta = (u * sv) @ vh if"),
    "iso_c: mean of the task vectors, not the sum": ("    m = taus.sum(0)\n    u, sv, vh = thin_svd(m)\n    floor",
                                                    "    m = taus.mean(0)\n    u, sv, vh = thin_svd(m)\n    floor"),
    "iso_c: largest singular value instead of the mean": ("delta = sv.mean() * (u @ vh) if",
                                                          "delta = sv.max() * (u @ vh) if"),
    "iso_c: scaling not applied": ("    return scaling * delta\n", "    return delta\n"),
    "iso_c: rank of the sum decides (the old rule)": ("        k = span_rank(taus, floor)\n        u, sv, vh",
                                                      "        k = numerical_rank(sv, m.shape)\n        u, sv, vh"),
    "iso_c: low-rank rule off": ("        u, sv, vh = u[:, :k], sv[:k], vh[:k]\n", ""),
    "iso_cts: no common-size rounding": ("task_space = round((k - int(k * common_fraction)) / t) * t",
                                         "task_space = (k - int(k * common_fraction)) // t * t"),
    "iso_cts: common space not projected out": ("thin_svd(tau - uc @ (uc.T @ tau))", "thin_svd(tau)"),
    "iso_cts: right projection instead of left": ("thin_svd(tau - uc @ (uc.T @ tau))",
                                                  "thin_svd(tau - (tau @ vhc.T) @ vhc)"),
    "iso_cts: no polar factor of U": ("u_all = polar(torch.cat([*us, uc], 1), low, noise)",
                                      "u_all = torch.cat([*us, uc], 1)"),
    "iso_cts: no polar factor of Vᵀ": ("vh_all = polar(torch.cat([*vhs, vhc], 0), low, noise)",
                                      "vh_all = torch.cat([*vhs, vhc], 0)"),
    "iso_cts: spectrum not flattened": ("return scaling * (sv_all.mean() * (u_all @ vh_all))",
                                        "return scaling * ((u_all * sv_all) @ vh_all)"),
    "iso_cts: common directions left out": ("u_all = polar(torch.cat([*us, uc], 1), low, noise)\n    vh_all = polar("
                                            "torch.cat([*vhs, vhc], 0), low, noise)",
                                            "u_all = polar(torch.cat(us, 1), low, noise)\n    vh_all = polar("
                                            "torch.cat(vhs, 0), low, noise)"),
    "iso_cts: common singular values left out of the mean": ("sv_all = torch.cat([*ss, sc])",
                                                             "sv_all = torch.cat(ss)"),
    "iso_cts: one task direction more": ("c, n = k - task_space, task_space // t",
                                         "c, n = k - task_space, task_space // t + 1"),
    "iso_cts: scaling not applied": ("return scaling * (sv_all.mean() * (u_all @ vh_all))",
                                     "return sv_all.mean() * (u_all @ vh_all)"),
    "iso_cts: rank of the sum decides (the old rule)": ("        k = span_rank(taus, floor)\n    task_space",
                                                        "        k = numerical_rank(sv, shape)\n    task_space"),
    "iso_cts: low-rank branch never taken": ("low = auto and (k < min(shape) or min(ranks) < n)",
                                             "low = False"),
    "iso_cts: no per-task rank cap": ("keep = [min(n, rank) if low else n for rank in ranks]",
                                      "keep = [n for rank in ranks]"),
    "iso_cts: polar never at rank": ("u_all = polar(torch.cat([*us, uc], 1), low, noise)",
                                     "u_all = polar(torch.cat([*us, uc], 1), False)"),
}


def main() -> int:
    original = TARGET.read_text()
    missed = []
    try:
        for name, (old, new) in MUTANTS.items():
            if original.count(old) != 1:
                raise SystemExit(f"{name}: the text to mutate occurs {original.count(old)} times")
            TARGET.write_text(original.replace(old, new))
            done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS],
                                  cwd=ROOT, capture_output=True, text=True)
            failed = [ln.split(" - ")[0] for ln in done.stdout.splitlines() if ln.startswith("FAILED")]
            print(f"{'caught' if done.returncode else 'MISSED':<7} {name}" + (f"  ({failed[0]})" if failed else ""),
                  flush=True)
            if not done.returncode:
                missed.append(name)
    finally:
        TARGET.write_text(original)
    print(f"{len(MUTANTS) - len(missed)}/{len(MUTANTS)} mutants caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

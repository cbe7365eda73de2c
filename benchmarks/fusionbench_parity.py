"""fakemerge's average / TA / TIES / TSV-M / Iso-C / Iso-CTS against FusionBench 0.2.33, live, at any width.

The committed fixture (tests/fixtures/make_fusionbench_fixture.py, checked by tests/test_merge_parity.py) pins
a width-8 model; this runs the same cases (full-rank; full-rank with an ill-conditioned sum) through the
installed FusionBench at a width you choose, where the numerical-rank thresholds are larger. Needs a venv
with fusion-bench (see the fixture script for the install) and this checkout's src:
    PYTHONPATH=src /tmp/fbvenv/bin/python benchmarks/fusionbench_parity.py [--hidden 64] [--layers 2]
Prints, per case and output, the largest error of any tensor relative to the merged update ‖θ_fb − θ0‖
(target ≤ 1e-4).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # test_merge_parity's error measure


def fixture_module():
    spec = importlib.util.spec_from_file_location("make_fusionbench_fixture",
                                                  ROOT / "tests" / "fixtures" / "make_fusionbench_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    fixture = fixture_module()
    fixture.CONFIG.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
                          num_attention_heads=max(1, args.hidden // 32))
    from test_merge_parity import worst_error

    from fakemerge.merging import merge

    print(f"width {args.hidden}, {args.layers} layers, {fixture.N} specialists, FusionBench 0.2.33")
    print(f"{'case':<9} {'output':<16} {'max rel. error':>14}  worst tensor")
    for case, dtype in (("full", torch.float32), ("illcond", torch.float64)):
        base = fixture.tiny(dtype, args.seed)
        specs = fixture.specialists(base, case, 100 + args.seed)
        reference = fixture.fusionbench(base, specs, list(fixture.OUTPUTS))
        theta0, states = base.state_dict(), [m.state_dict() for m in specs]
        for output, (method, params) in fixture.OUTPUTS.items():
            worst, where = worst_error(merge(method, theta0, states, **params), reference[output], theta0)
            print(f"{case:<9} {output:<16} {worst:>14.2e}  {where}", flush=True)


if __name__ == "__main__":
    main()

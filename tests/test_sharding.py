"""Work over N processes: the share / reorder arithmetic (simulated exchange), then real 2-process gloo runs of
`eval` and `detect` under `accelerate launch`, whose outputs must equal one process's."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fakemerge.cli import main
from fakemerge.data.formats import load_records
from fakemerge.data.records import select
from fakemerge.sharding import Shards


@pytest.mark.parametrize("n,world,chunk", [(10, 3, 2), (7, 2, 3), (2, 4, 1), (12, 3, 4), (0, 2, 3), (5, 2, 8)])
def test_blocks_cover_the_input_and_gather_restores_its_order(n, world, chunk, monkeypatch):
    items = list(range(n))
    shards = [Shards(rank, world, torch.device("cpu")) for rank in range(world)]
    blocks = [s.blocks(n, chunk) for s in shards]
    assert sorted(i for bs in blocks for b in bs for i in b) == items
    assert all(len(b) == chunk for bs in blocks for b in bs if b.stop < n)  # only the very last block is short
    steps = shards[0].steps(n, chunk)
    assert all(s.steps(n, chunk) == steps >= len(bs) for s, bs in zip(shards, blocks, strict=True))
    # Each process turns an item into a variable number of results (as detect's face tracks do).
    results = [[[(i, j) for i in b for j in range(i % 3)] for b in bs] for bs in blocks]
    step = {"i": 0}

    def fake_gather(obj):  # what all_gather_object hands every process at this step
        parts = [r[step["i"]] if step["i"] < len(r) else [] for r in results]
        assert obj == [parts[0]]
        step["i"] += 1
        return parts

    monkeypatch.setattr("accelerate.utils.gather_object", fake_gather)
    out = [x for part in shards[0].gather(iter(results[0]), n, chunk) for x in part]
    assert out == [(i, j) for i in items for j in range(i % 3)] and step["i"] == (steps if world > 1 else 0)


RUNNER = """import json, sys
from fakemerge.cli import main
for args in json.loads(sys.argv[1]):
    try:
        main(args)
    except SystemExit as e:
        print(f"exit {e.code}")
"""


def _launch(commands: list[list[str]], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run CLI commands one after the other in 2 gloo processes (one process group start for all)."""
    script = tmp_path / "run_cli.py"
    script.write_text(RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
           json.dumps(commands)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_process_eval_and_detect_equal_one_process(tiny_data, tmp_path):
    from test_evaluation import save_calibrated_pair

    data = tmp_path / "data"
    shutil.copytree(tiny_data.parent, data)
    root, records = load_records(data / tiny_data.name)
    test = select(records, "test")
    (root / test[3].path).write_bytes(b"not a png")  # unreadable: found by whichever process owns it
    (root / test[6].path).unlink()  # missing: known to every process up front
    models = save_calibrated_pair(tmp_path)
    args = [*map(str, models), "--data", str(data / tiny_data.name), "--batch-size", "5", "--perturb",
            "jpeg:50,noise:0.1", "--no-roc"]
    # detect over 9 dataset images (one unreadable, one missing) and an absent file: exit 1 from both, the same
    # results in the same order.
    inputs = [str(root / r.path) for r in test[:9]] + [str(tmp_path / "absent.png")]
    detect = ["detect", str(models[0]), *inputs, "--batch-size", "2", "--format", "json", "-o"]
    main(["eval", *args, "--out", str(tmp_path / "one")])
    with pytest.raises(SystemExit) as e:
        main([*detect, str(tmp_path / "one.json")])
    assert e.value.code == 1
    proc = _launch([["eval", *args, "--out", str(tmp_path / "two")], [*detect, str(tmp_path / "two.json")]],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only the main process prints and writes; only it reports the failed inputs (exit 1).
    assert proc.stdout.count("wrote reports to") == 1 and proc.stdout.count("exit ") == 1
    assert "exit 1" in proc.stdout
    for name in ("spec_FS", "spec_FR"):
        one, two = tmp_path / "one" / name, tmp_path / "two" / name
        for csv_name in ("predictions.csv", "perturbed/jpeg_50.csv", "perturbed/noise_0.1.csv"):
            a, b = _rows(one / csv_name), _rows(two / csv_name)
            assert [r["path"] for r in a] == [r["path"] for r in b] and len(a) == len(test) - 2
            assert all(abs(float(x["score"]) - float(y["score"])) <= 1e-5 * max(1.0, float(x["score"]))
                       for x, y in zip(a, b, strict=True))
        ra, rb = (json.loads((d / "report.json").read_text()) for d in (one, two))
        assert rb["processes"] == 2 and ra["processes"] == 1
        assert len(rb["skipped"]) == 2 and rb["skipped"] == ra["skipped"]
        for key in ("overall", "families", "robustness", "threshold"):
            assert rb[key] == ra[key], key
    assert json.loads((tmp_path / "two" / "results.json").read_text()) == \
        json.loads((tmp_path / "one" / "results.json").read_text())

    one, two = ([json.loads(line) for line in (tmp_path / f"{n}.json").read_text().splitlines()]
                for n in ("one", "two"))
    assert [r["input"] for r in two] == inputs == [r["input"] for r in one]
    ok = [True, True, True, False, True, True, False, True, True, False]  # unreadable, missing, absent
    assert [r["error"] is None for r in two] == [r["error"] is None for r in one] == ok
    for a, b in zip(one, two, strict=True):
        assert a["verdict"] == b["verdict"] and (a["score"] is None) == (b["score"] is None)
        if a["score"] is not None:
            assert abs(a["score"] - b["score"]) <= 1e-5

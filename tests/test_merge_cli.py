"""`fakemerge merge` (args, recipe, --add --from) and `fakemerge import` through the real CLI entry point."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_checkpoints import deepfakebench_state, tiny_detector
from test_merge_engine import make_specialist

from fakemerge.cli import main
from fakemerge.models.detector import read_meta


def run(*args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.fixture(scope="module")
def specs(tiny_base, tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("cli_specs")
    return [
        make_specialist(tiny_base, d / f"{f}.safetensors", i, f) for i, f in enumerate(["FS", "FR", "EFS"])
    ]


def test_merge_args_and_recipe_give_the_same_file(tiny_base, specs, tmp_path, capsys):
    a = tmp_path / "a.safetensors"
    assert (
        run("merge", "--method", "ties", "--base", tiny_base, *specs[:2], "-o", a, "--set", "density=0.5")
        == 0
    )
    assert "merged 2 specialists with ties" in capsys.readouterr().out
    assert read_meta(a).recipe["parameters"]["density"] == 0.5
    recipe = tmp_path / "r" / "recipe.yaml"
    recipe.parent.mkdir()
    rel = [os.path.relpath(p, recipe.parent) for p in specs[:2]]
    recipe.write_text(
        f"method: ties\nbase: {tiny_base}\nmodels:\n  - model: {rel[0]}\n  - {rel[1]}\n"
        "parameters:\n  density: 0.5\nout: b.safetensors\n"
    )
    assert run("merge", recipe) == 0
    ta, tb = tensors(a), tensors(tmp_path / "r" / "b.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _task_arithmetic(base, models, out) -> int:
    return run("merge", "-m", "task_arithmetic", "--base", base, *models, "-o", out, "--set", "scaling=0.4")


def test_add_from_merged_equals_merging_all(tiny_base, specs, tmp_path):
    two, three, direct = (tmp_path / f"{n}.safetensors" for n in ("two", "three", "direct"))
    assert _task_arithmetic(tiny_base, specs[:2], two) == 0
    assert run("merge", "--add", specs[2], "--from", two, "-o", three) == 0
    assert _task_arithmetic(tiny_base, specs, direct) == 0
    t3, td = tensors(three), tensors(direct)
    assert all(torch.equal(t3[k], td[k]) for k in td)
    meta = read_meta(three)
    assert meta.families == ["FS", "FR", "EFS"] and len(meta.recipe["models"]) == 3
    assert (
        run("merge", "--add", specs[2], "--from", three, "-o", tmp_path / "x.safetensors") == 2
    )  # already in


def test_add_refuses_a_changed_specialist_unless_forced(tiny_base, specs, tmp_path, capsys):
    moved = [tmp_path / s.name for s in specs[:2]]
    for s, m in zip(specs, moved, strict=False):
        m.write_bytes(s.read_bytes())
    merged = tmp_path / "m.safetensors"
    assert run("merge", "-m", "average", "--base", tiny_base, *moved, "-o", merged) == 0
    make_specialist(tiny_base, moved[1], 7, "FR")  # retrained in place
    capsys.readouterr()
    assert run("merge", "--add", specs[2], "--from", merged, "-o", tmp_path / "n.safetensors") == 2
    err = capsys.readouterr().err
    assert "content changed" in err and str(moved[1]) in err.replace("\n", "")
    assert not (tmp_path / "n.safetensors").exists()
    assert run("merge", "--add", specs[2], "--from", merged, "-o", tmp_path / "n.safetensors", "--force") == 0


def test_bad_usage_exits_2_with_one_line(tiny_base, specs, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    assert run("merge", "-m", "nope", "--base", tiny_base, *specs, "-o", out) == 2
    assert run("merge", "-m", "ties", "--base", tiny_base, *specs, "-o", out, "--set", "density=2") == 2
    assert run("merge", *specs, "-o", out) == 2
    assert (
        run("merge", "-m", "average", "--base", tiny_base, tmp_path / "missing.safetensors", "-o", out) == 2
    )
    err = capsys.readouterr().err  # rich wraps long lines at the console width
    assert err.count("error:") == 4 and "missing.safetensors" in err.replace("\n", "")
    assert not out.exists()


def test_report_and_import_then_merge(tiny_base, specs, tmp_path, capsys):
    pth = tmp_path / "df40_fs.pth"
    torch.save(deepfakebench_state(tiny_detector(tiny_base, seed=5)), pth)
    imported = tmp_path / "imported.safetensors"
    assert run("import", pth, "-o", imported, "--base", tiny_base, "--family", "FE") == 0
    assert "imported" in capsys.readouterr().out
    # DeepfakeBench's 0.5/0.5 inputs are not a fakemerge specialist's: the merge says so and writes nothing
    assert run("merge", "-m", "average", "--base", tiny_base, specs[0], imported, "-o", tmp_path / "x.safetensors") == 2
    assert "preprocessing" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()
    assert run("import", pth, "-o", imported, "--base", tiny_base, "--family", "FE",
               "--preprocessing", "fakemerge") == 0
    rep = tmp_path / "rep"
    assert (
        run(
            "merge",
            "-m",
            "average",
            "--base",
            tiny_base,
            specs[0],
            imported,
            "-o",
            tmp_path / "m.safetensors",
            "--report",
            rep,
        )
        == 0
    )
    assert (rep / "report.json").is_file() and (rep / "task_cosine.png").is_file()
    assert read_meta(tmp_path / "m.safetensors").families == ["FS", "FE"]
    no_base = tmp_path / "nobase.safetensors"
    assert run("import", pth, "-o", no_base, "--preprocessing", "fakemerge") == 0
    assert (
        run(
            "merge", "-m", "average", "--base", tiny_base, specs[0], no_base, "-o", tmp_path / "n.safetensors"
        )
        == 2
    )
    assert "records no base hash" in capsys.readouterr().err


def test_dtype_device_and_formula_on_the_command_line(tiny_base, specs, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert run("merge", "-m", "task_arithmetic", "--base", tiny_base, *specs[:2], "-o", out, "--dtype", "bfloat16",
               "--device", "cpu", "--set", "scaling=0.5") == 0
    printed = capsys.readouterr().out.replace("\n", "")
    assert "applied: θ0 + 0.5·(τ1 + τ2)" in printed and f"τ1 = {specs[0].stem}" in printed
    assert all(t.dtype == torch.bfloat16 for t in tensors(out).values())
    assert read_meta(out).recipe["dtype"] == "bfloat16" and "device" not in read_meta(out).recipe
    assert run("merge", "-m", "average", "--base", tiny_base, *specs[:2], "-o", out, "--device", "tpu") == 2
    assert "device 'tpu'" in capsys.readouterr().err


def test_a_command_imports_only_its_own_module_and_help_lists_every_command():
    """`fakemerge merge` registers (imports) the merge command alone; `--help` still lists them all."""
    import subprocess
    import sys

    from fakemerge.cli import COMMANDS

    code = ("import sys; from fakemerge.cli import main\n"
            "try:\n    main(['merge', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('fakemerge.cli.')))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    imported = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 -- our own child's printed list
    assert "fakemerge.cli.merge" in imported
    assert not [m for m in imported if m.rsplit(".", 1)[1] in set(COMMANDS.values()) - {"merge"}], imported
    listed = subprocess.run([sys.executable, "-m", "fakemerge", "--help"], capture_output=True, text=True,
                            env=env, check=True).stdout
    assert all(f" {command} " in listed for command in COMMANDS)

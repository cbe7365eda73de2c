"""Hugging Face interop: `fakemerge export --hf DIR` loads with `CLIPVisionModel.from_pretrained(DIR)` and gives
the fakemerge model's features, in transformers 5.x (this venv) and 4.x (a side install made by `make test`:
FAKEMERGE_TRANSFORMERS4 names its folder; without it the 4.x test is skipped)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY
from transformers import CLIPVisionModel

from fakemerge.cli import main
from fakemerge.errors import InputError
from fakemerge.io.safetensors import save_tensors
from fakemerge.models.backbone import tiny_config
from fakemerge.models.detector import Detector, ModelMeta, save_detector
from fakemerge.models.hf_export import export_hf, model_card
from fakemerge.models.loading import load_detector, open_source
from fakemerge.models.preprocessing import preset

TRANSFORMERS4 = os.environ.get("FAKEMERGE_TRANSFORMERS4")


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> Path:
    """A detector file as the merge engine writes it: 0.5/0.5 preprocessing, a recipe with hashes."""
    torch.manual_seed(0)
    det = Detector(CLIPVisionModel(tiny_config(**TINY)), preset("deepfakebench", 32), threshold=0.41).eval()
    recipe = {"method": "r2m", "base": "base", "parameters": {"alpha": 0.6},
              "models": [{"model": "fs.safetensors", "sha256": "a" * 64, "families": ["FS"]},
                         {"model": "fr.safetensors", "sha256": "b" * 64, "families": ["FR"]}], "head": "average"}
    path = tmp_path_factory.mktemp("merged") / "merged.safetensors"
    save_detector(det, path, ModelMeta(kind="merged", method="r2m", families=["FS", "FR"], base_id="base",
                                       base_hash="c" * 64, recipe=recipe))
    return path


def pixels(seed: int = 3) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_export_loads_in_transformers_5_with_the_same_features(merged, tmp_path, capfd):
    out = export_hf(merged, tmp_path / "hf")
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "head.safetensors", "model.safetensors",
                                       "preprocessor_config.json"]
    detector, meta = load_detector(merged)
    capfd.readouterr()
    hf = CLIPVisionModel.from_pretrained(out).eval()
    assert "LOAD REPORT" not in capfd.readouterr().err  # nothing unexpected, nothing missing
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=pixels()).pooler_output, detector.features(pixels()),
                                   rtol=0, atol=0)
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.5] * 3 and processor["image_std"] == [0.5] * 3
    assert processor["crop_size"] == {"height": 32, "width": 32} and processor["resample"] == 3
    again, again_meta = load_detector(out)  # fakemerge reads the export as the same detector
    with torch.no_grad():
        torch.testing.assert_close(again(pixels()), detector(pixels()), rtol=0, atol=0)
    assert again.preprocessing == detector.preprocessing and again.threshold == 0.41
    assert again_meta.families == ["FS", "FR"] and open_source(out).origin.startswith("stored in model.safetensors")


def test_model_card_and_info(merged, tmp_path, capsys):
    report = {"data": "DF40/test.json", "split": "test", "video_agg": "mean",
              "families": {"FS": {"auc": 0.91, "ap": 0.9, "eer": 0.12, "video_auc": 0.95, "n_real": 10, "n_fake": 12}},
              "overall": {"auc": 0.9, "ap": 0.89, "eer": 0.13, "video_auc": float("nan"), "n_real": 10, "n_fake": 12},
              "split_overlap": {"val/test": {"videos": 3, "frames": 6}}}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "report.json").write_text(json.dumps(report))
    export_hf(merged, tmp_path / "hf", evaluation=tmp_path / "eval")
    card = (tmp_path / "hf" / "README.md").read_text()
    for expected in ("**merged** detector (r2m) for forgery families: FS, FR", "decision threshold 0.41",
                     "content hash (sha256 of the backbone tensors): `" + "c" * 64 + "`",
                     "| fs.safetensors | FS | `" + "a" * 64 + "` |", '`{"alpha": 0.6}`',
                     "bicubic resize to 32x32, mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5]",
                     "| FS | 0.9100 | 0.9000 | 0.1200 | 0.9500 | 10 | 12 |",
                     "| overall | 0.9000 | 0.8900 | 0.1300 | n/a",
                     "Split overlap allowed: val/test share 3 video(s), 6 frame(s)."):
        assert expected in card, expected
    main(["info", str(merged), "--eval", str(tmp_path / "eval")])
    assert capsys.readouterr().out.strip() == card.strip()
    assert model_card(open_source(merged)).strip() == card.split("## Evaluation")[0].strip()


def test_export_is_atomic_and_does_not_overwrite(merged, tmp_path, monkeypatch):
    export_hf(merged, tmp_path / "hf")
    with pytest.raises(InputError, match="already exists .pass --overwrite"):
        export_hf(merged, tmp_path / "hf")
    import fakemerge.models.hf_export as hf_export

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf_export, "save_tensors", crash)
    with pytest.raises(OSError, match="disk full"):
        export_hf(merged, tmp_path / "hf", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # the old export intact, no temp folder
    monkeypatch.undo()
    export_hf(merged, tmp_path / "hf", overwrite=True)
    CLIPVisionModel(tiny_config(**TINY)).save_pretrained(tmp_path / "bare")
    with pytest.raises(InputError, match="has no head, so it is not a detector"):
        export_hf(tmp_path / "bare", tmp_path / "x")


TRANSFORMERS4_CHECK = r"""
import sys, torch, transformers
from transformers import CLIPVisionModel
assert transformers.__version__.startswith("4."), transformers.__version__
x, want = torch.load(sys.argv[1])
for folder in sys.argv[2:]:
    try:
        model = CLIPVisionModel.from_pretrained(folder).eval()
    except Exception as e:  # noqa: BLE001 - report which folder and why
        print(f"FAIL {folder}: {type(e).__name__}: {str(e).splitlines()[0]}")
        continue
    with torch.no_grad():
        got = model(pixel_values=x).pooler_output
    print(("OK " if torch.equal(got, want) else "DIFF ") + folder)
"""


@pytest.mark.skipif(not TRANSFORMERS4, reason="FAKEMERGE_TRANSFORMERS4 not set (make test installs transformers 4.x)")
def test_files_load_in_transformers_4(merged, tmp_path):
    """The export and a fakemerge file (as model.safetensors beside its config) load in 4.x; a header whose
    `format` is not `pt` — what fakemerge wrote before — is refused there, so this test can fail."""
    export = export_hf(merged, tmp_path / "export")
    as_file = tmp_path / "file"
    as_file.mkdir()
    shutil.copy(export / "config.json", as_file / "config.json")
    shutil.copy(merged, as_file / "model.safetensors")
    old = tmp_path / "old"
    shutil.copytree(as_file, old)
    detector, meta = load_detector(merged)
    header = {**meta.to_header(), "format": "fakemerge.detector/1"}
    save_tensors(detector.state_tensors(), old / "model.safetensors", header)
    with torch.no_grad():
        torch.save((pixels(), detector.features(pixels())), tmp_path / "want.pt")
    (tmp_path / "check.py").write_text(TRANSFORMERS4_CHECK)
    env = {**os.environ, "PYTHONPATH": TRANSFORMERS4}
    run = subprocess.run([sys.executable, str(tmp_path / "check.py"), str(tmp_path / "want.pt"), str(export),
                          str(as_file), str(old)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[:2] == [f"OK {export}", f"OK {as_file}"], run.stdout
    assert lines[2].startswith(f"FAIL {old}") and "ncompatible" in lines[2], lines[2]

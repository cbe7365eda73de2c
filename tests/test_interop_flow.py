"""The field's files end to end through the CLI: DeepfakeBench checkpoints imported, merged, evaluated and run
on images — each score equal to a reference computed with DeepfakeBench's own normalisation (mean = std =
0.5), so the preprocessing must travel import → merge → eval → detect; plus DF40-style data through train
and several datasets in one eval."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from conftest import make_tiny_dataset
from test_checkpoints import clip_model, deepfakebench_ckpt, reference_inputs
from test_merge_cli import run
from torch import nn

from fakemerge.keys import strip_prefix
from fakemerge.models.backbone import backbone_state
from fakemerge.models.detector import read_meta
from fakemerge.models.loading import load_base


@pytest.fixture(scope="module")
def field(tiny_base, tmp_path_factory):
    """Two DF40-style clip.pth specialists (train_on_fs / train_on_fr) fine-tuned from the tiny base."""
    d = tmp_path_factory.mktemp("field")
    base = strip_prefix(backbone_state(load_base(tiny_base)[0]))
    models = []
    for i, family in enumerate(("FS", "FR")):
        model = clip_model()
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for k, p in model.vision_model.state_dict().items():
                p.copy_(base[k] + 0.02 * torch.randn(p.shape, generator=g))
        head = nn.Linear(32, 2)
        torch.save(deepfakebench_ckpt(model, head), d / f"train_on_{family.lower()}.pth")
        models.append((model.vision_model, head))
    return d, models


def reference(models, imgs) -> np.ndarray:
    """P(fake) of the average merge, computed by hand: mean weights, mean heads, DeepfakeBench's inputs."""
    merged = clip_model().vision_model
    with torch.no_grad():
        for k, p in merged.state_dict().items():
            p.copy_(sum(m.state_dict()[k] for m, _ in models) / len(models))
        w = sum(h.weight for _, h in models) / len(models)
        b = sum(h.bias for _, h in models) / len(models)
        x = reference_inputs(imgs, 32, [0.5] * 3, [0.5] * 3, "resize")
        return (merged(x).pooler_output @ w.T + b).softmax(-1)[:, 1].numpy()


def test_deepfakebench_normalisation_survives_import_merge_eval_detect(tiny_base, field, tmp_path, capsys):
    d, models = field
    fs, fr = tmp_path / "fs.safetensors", tmp_path / "fr.safetensors"
    assert run("import", d / "train_on_fs.pth", "-o", fs, "--base", tiny_base, "--family", "FS") == 0
    assert run("import", d / "train_on_fr.pth", "-o", fr, "--base", tiny_base, "--family", "FR") == 0
    shown = capsys.readouterr().out.replace("\n", "")
    assert "mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5]" in shown
    assert "(DeepfakeBench / DF40 CLIP detector training config)" in shown
    merged = tmp_path / "merged.safetensors"
    assert run("merge", "-m", "average", "--base", tiny_base, fs, fr, "-o", merged) == 0
    assert read_meta(merged).preprocessing["mean"] == [0.5] * 3
    data = make_tiny_dataset(tmp_path / "data", n_per=2, frames=1, splits=("test",))
    assert run("eval", merged, "--data", data, "-o", tmp_path / "eval") == 0
    with open(tmp_path / "eval" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    imgs = [cv2.cvtColor(cv2.imread(str(data.parent / r["path"])), cv2.COLOR_BGR2RGB) for r in rows]
    np.testing.assert_allclose([float(r["score"]) for r in rows], reference(models, imgs), rtol=1e-5, atol=1e-6)
    face = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # at the input size
    cv2.imwrite(str(tmp_path / "face.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    assert run("detect", merged, tmp_path / "face.png", "--format", "json", "-o", tmp_path / "det.jsonl") == 0
    score = json.loads((tmp_path / "det.jsonl").read_text().splitlines()[0])["score"]
    np.testing.assert_allclose(score, reference(models, [face])[0], rtol=1e-5)


def write_frames(root, paths) -> None:
    rng = np.random.default_rng(0)
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def df40_json(root, name: str, methods, splits=("train", "val", "test"), prefix: str = "") -> None:
    groups, paths = {}, []
    for m in methods:
        for kind in ("Real", "Fake"):
            group = f"{m}_{kind}"
            groups[group] = {}
            for split in splits:
                groups[group][split] = {}
                for v in range(2):
                    frames = [f"df40/{m}/{kind}/{split}/{v}/{i:03d}.png" for i in range(2)]
                    paths += frames
                    groups[group][split][str(v)] = {"label": group, "frames": [prefix + f for f in frames]}
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.json").write_text(json.dumps({name: groups}))
    write_frames(root, paths)


def test_train_on_df40_face_swaps_and_eval_several_datasets(tiny_base, tmp_path, capsys):
    """`train --families FS` on DF40 trains on every face-swap method; eval takes several test sets."""
    cluster = "/Youtu_Pangu_Security_Public/youtu-pangu-public/zhiyuanyan/deepfakes_detection_datasets/"
    df40_json(tmp_path, "DF40_ff", ["simswap", "blendface", "fomm"], prefix=cluster)
    out = tmp_path / "fs.safetensors"
    args = ("train", "--base", tiny_base, "--data", tmp_path / "DF40_ff.json", "--families", "FS", "-o", out,
            "--epochs", "1", "--batch-size", "8", "--frames-per-video", "1")
    assert run(*args) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "10/10 frames not found (first: /Youtu_Pangu_Security_Public/" in err and "--path-map" in err
    assert run(*args, "--path-map", f"{cluster}=") == 0
    # fakes: simswap + blendface (2 videos x 1 frame each), not fomm (FR); reals: every method file's 3 x 2
    assert "training full: 10 train / 10 val images" in capsys.readouterr().err
    meta = read_meta(out)
    assert meta.families == ["FS"] and meta.recipe["frames_per_video"] == 1
    assert "fomm_Fake" not in json.dumps(meta.extra["data_warnings"])
    df40_json(tmp_path / "cdf", "simswap_cdf", ["simswap"], splits=("test",))
    df40_json(tmp_path / "dfl", "deepfacelab", ["deepfacelab"], splits=("test",))
    capsys.readouterr()
    assert run("eval", out, "--data", tmp_path / "cdf" / "simswap_cdf.json", "--data",
               tmp_path / "dfl" / "deepfacelab.json", "-o", tmp_path / "eval") == 0
    rows = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [(r["dataset"].rsplit("/", 1)[1], r["family"], r["seen"]) for r in rows] == [
        ("simswap_cdf.json", "FS", True), ("deepfacelab.json", "FS", True)]
    assert (tmp_path / "eval" / "simswap_cdf" / "report.json").is_file()
    assert (tmp_path / "eval" / "deepfacelab" / "report.json").is_file()
    assert "## " in (tmp_path / "eval" / "results.md").read_text()


def test_eval_refuses_overlapping_splits_unless_allowed(tmp_path, capsys, tiny_base):
    from test_checkpoints import tiny_detector

    from fakemerge.models.detector import ModelMeta, save_detector

    save_detector(tiny_detector(tiny_base), tmp_path / "m.safetensors", ModelMeta(families=["FS"]))
    groups, paths = {}, []
    for group, folder in (("CelebDFv2_real", "Celeb-real"), ("CelebDFv2_fake", "Celeb-synthesis")):
        test = {f"id{i}": {"label": group, "frames": [f"{folder}/frames/id{i}/000.png"]} for i in range(2)}
        paths += [f"{folder}/frames/id{i}/000.png" for i in range(2)]
        groups[group] = {"train": {}, "val": test, "test": test}
    (tmp_path / "Celeb-DF-v2.json").write_text(json.dumps({"Celeb-DF-v2": groups}))
    write_frames(tmp_path, paths)
    assert run("eval", tmp_path / "m.safetensors", "--data", tmp_path / "Celeb-DF-v2.json", "-o", tmp_path / "e") == 2
    assert "splits val and test share 4 video(s)" in capsys.readouterr().err.replace("\n", "")
    assert run("eval", tmp_path / "m.safetensors", "--data", tmp_path / "Celeb-DF-v2.json", "-o", tmp_path / "e",
               "--allow-split-overlap") == 0
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["split_overlap"]["val/test"]["videos"] == 4
    assert "Split overlap" in (tmp_path / "e" / "report.md").read_text()
    assert run("eval", tmp_path / "m.safetensors", "--data", tmp_path / "Celeb-DF-v2.json", "-o", tmp_path / "e",
               "--allow-split-overlap", "--root", tmp_path / "e") == 2
    assert "4/4 frames not found under" in capsys.readouterr().err.replace("\n", "")


def test_detect_resizes_with_the_models_own_mode(tiny_base, field, tmp_path):
    d, models = field
    merged = tmp_path / "fs.safetensors"
    assert run("import", d / "train_on_fs.pth", "-o", merged, "--base", tiny_base) == 0
    big = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "face.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    assert run("detect", merged, tmp_path / "face.png", "--format", "json", "-o", tmp_path / "det.jsonl") == 0
    score = json.loads((tmp_path / "det.jsonl").read_text().splitlines()[0])["score"]
    np.testing.assert_allclose(score, reference(models[:1], [big])[0], rtol=1e-5)


def test_training_takes_the_bases_preprocessing(tiny_base, field, tmp_path):
    """A fakemerge-file base keeps its own preprocessing: fine-tuning an imported DeepfakeBench model stays
    on 0.5/0.5 inputs."""
    d, _ = field
    base = tmp_path / "dfb.safetensors"
    assert run("import", d / "train_on_fs.pth", "-o", base, "--base", tiny_base) == 0
    data = make_tiny_dataset(tmp_path / "data", n_per=2, frames=1)
    out = tmp_path / "ft.safetensors"
    assert run("train", "--base", base, "--data", data, "--families", "FS", "-o", out, "--epochs", "1",
               "--method", "linear") == 0
    assert read_meta(out).preprocessing == read_meta(base).preprocessing == {
        "size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "bicubic"}


def test_eval_of_dfdc_json_warns_about_its_val(tmp_path, capsys, tiny_base):
    from test_checkpoints import tiny_detector
    from test_field_datasets import dfdc, touch_frames

    from fakemerge.data.formats import read_dataset
    from fakemerge.models.detector import ModelMeta, save_detector

    save_detector(tiny_detector(tiny_base), tmp_path / "m.safetensors", ModelMeta(families=["FS"]))
    path = dfdc(tmp_path)
    touch_frames(tmp_path, read_dataset(path, splits=["test"]).records)
    assert run("eval", tmp_path / "m.safetensors", "--data", path, "-o", tmp_path / "e") == 0
    err = capsys.readouterr().err.replace("\n", "")
    assert "DFDC_Real/val is a single {label, frames} entry" in err and "ignored" in err

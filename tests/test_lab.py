"""ForgeryLab: determinism, layout, disjoint identities, every family on disk, contact sheets, tiny base."""

import json

import cv2
import numpy as np
import pytest
from transformers import CLIPVisionModel

from fakemerge.data.formats import load_records
from fakemerge.lab import generate as gen
from fakemerge.lab.families import FAMILIES, SEEN_FAMILIES, STRENGTH, UNSEEN_FAMILIES, forge, plan_video
from fakemerge.lab.generate import generate, render_video
from fakemerge.lab.render import random_camera, random_identity, random_pose, region_mask, render, sensor


@pytest.fixture(scope="module")
def tiny_scale():
    old = dict(gen.SCALES)
    gen.SCALES["tiny"] = gen.Scale((3, 2, 2), real_videos=1, fake_videos=1, frames=2)
    yield "tiny"
    gen.SCALES.clear()
    gen.SCALES.update(old)


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny_scale):
    a = generate(tmp_path / "a", size=32, seed=3, scale=tiny_scale)
    b = generate(tmp_path / "b", size=32, seed=3, scale=tiny_scale)
    c = generate(tmp_path / "c", size=32, seed=4, scale=tiny_scale)
    assert a.read_bytes() == b.read_bytes()
    ta, tb, tc = _tree_bytes(a.parent), _tree_bytes(b.parent), _tree_bytes(c.parent)
    assert ta == tb
    assert ta.keys() == tc.keys() and ta != tc


def test_layout_families_splits_and_disjoint_identities(tmp_path, tiny_scale):
    js = generate(tmp_path / "d", size=32, seed=0, scale=tiny_scale)
    tree = json.loads(js.read_text())["ForgeryLab"]
    assert set(tree) == {"ForgeryLab_Real", *(f"ForgeryLab_{f}" for f in FAMILIES)}
    root, records = load_records(js)
    assert {r.family for r in records} == {"real", *FAMILIES}
    assert all((root / r.path).is_file() for r in records)
    ids = {s: {r.video.split("/")[-1].split("_")[0] for r in records if r.split == s} for s in gen.SPLITS}
    # identity numbers restart per split but are drawn from different streams: check pixels, not names
    first = {s: render_video(0, gen.SPLITS.index(s), 0, 0, "real", 32, 1)[0] for s in gen.SPLITS}
    assert not np.array_equal(first["train"], first["test"]) and ids["train"]
    assert len({r.video for r in records}) == len(records) // 2  # 2 frames per video, unique video ids
    for family in FAMILIES:
        assert (js.parent / "contact" / f"{family}.png").stat().st_size > 0


@pytest.mark.parametrize("family", ["FS", "FR", "FE", "FS-poisson"])
def test_local_forgeries_leave_pixels_outside_their_region_untouched(family):
    rng = np.random.default_rng(1)
    ident, pose = random_identity(rng), random_pose(rng)
    captured = render(ident, pose, 64)
    plan = plan_video(family, rng)
    fake = forge(family, captured, ident, pose, plan)
    regions = {"FS": ["face"], "FS-poisson": ["face"], "FR": ["mouth", "eyes"], "FE": [plan.edit]}[family]
    touched = sum(region_mask(ident, pose, 64, r) for r in regions)
    reach = 2 * int(np.ceil(3 * STRENGTH[family].get("feather", 0.8))) + 3  # the feathered edge's extent
    outside = cv2.dilate((touched > 0).astype(np.uint8), np.ones((reach, reach), np.uint8)) == 0
    assert outside.sum() > 300
    np.testing.assert_allclose(fake[outside], captured[outside], atol=1e-3)
    assert np.abs(fake - captured).max() > 5


@pytest.mark.parametrize("family", ["EFS", "EFS-bilinear"])
def test_generator_families_replace_the_whole_image(family):
    rng = np.random.default_rng(2)
    ident, pose = random_identity(rng), random_pose(rng)
    captured = sensor(render(ident, pose, 64), random_camera(rng), rng)
    fake = forge(family, captured, ident, pose, plan_video(family, rng))
    assert (np.abs(fake - captured).mean(-1) > 0.5).mean() > 0.5
    assert set(SEEN_FAMILIES).isdisjoint(UNSEEN_FAMILIES)


def test_bytes_do_not_depend_on_the_worker_count(tmp_path, tiny_scale):
    one = generate(tmp_path / "w1", size=32, seed=5, scale=tiny_scale, workers=1)
    two = generate(tmp_path / "w2", size=32, seed=5, scale=tiny_scale, workers=2)
    assert one.read_bytes() == two.read_bytes()
    assert _tree_bytes(tmp_path / "w1") == _tree_bytes(tmp_path / "w2")


def test_generate_reuses_an_identical_dataset(tmp_path, tiny_scale):
    js = generate(tmp_path / "e", size=32, seed=0, scale=tiny_scale)
    stamp = js.stat().st_mtime_ns
    assert generate(tmp_path / "e", size=32, seed=0, scale=tiny_scale).stat().st_mtime_ns == stamp


def test_cache_key_follows_the_lab_source_not_only_the_settings(tmp_path, monkeypatch):
    (tmp_path / "render.py").write_text("A = 1\n")
    monkeypatch.setattr(gen, "LAB_SOURCES", tmp_path)
    key = gen.settings_hash(seed=0)
    assert gen.settings_hash(seed=0) == key and gen.settings_hash(seed=1) != key
    (tmp_path / "render.py").write_text("A = 2\n")
    assert gen.settings_hash(seed=0) != key


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        generate(tmp_path, scale="huge")
    with pytest.raises(ValueError, match="size"):
        generate(tmp_path, size=8)


def test_pretrain_writes_a_loadable_hf_dir_and_is_cached(tmp_path, monkeypatch):
    from fakemerge.lab import pretrain as pt

    monkeypatch.setitem(pt.SETTINGS, "small", {"identities": 4, "per_identity": 4, "epochs": 1, "lr": 1e-3,
                                                "batch": 8})
    monkeypatch.setattr(pt, "real_images", _small_real_images(pt.real_images))
    report = pt.pretrain(tmp_path / "base", seed=0, scale="small")
    model = CLIPVisionModel.from_pretrained(tmp_path / "base")
    assert model.config.hidden_size == 128 and report["steps"] >= 1
    assert set(report["probe_pretrained"]) == {"identity", "jpeg_bin", "noise_bin"}
    mtime = (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns
    assert pt.pretrain(tmp_path / "base", seed=0, scale="small") == report
    assert (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns == mtime


def _small_real_images(real_images):
    def small(n_ids, per_id, seed, size):
        return real_images(min(n_ids, 4), min(per_id, 4), seed, size)
    return small

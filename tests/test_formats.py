"""Dataset readers (DeepfakeBench JSON, folder tree, CSV) and the image dataset's skip-and-count policy."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch

from fakemerge.data.dataset import SKIPPED_LABEL, DecodedCache, EpochShuffle, ImageDataset, drop_skipped
from fakemerge.data.formats import classify_label, load_records, records_from_deepfakebench
from fakemerge.data.records import Record, select
from fakemerge.errors import InputError
from fakemerge.models.preprocessing import Preprocessing


def write_png(path, value=128, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), value, np.uint8))


def dfb(groups: dict, name="DS") -> dict:
    return {name: groups}


def test_tiny_dataset_records(tiny_data):
    root, records = load_records(tiny_data)
    assert root == tiny_data.parent
    assert len(records) == 3 * 3 * 8 * 2  # groups x splits x videos x frames
    assert {r.family for r in records} == {"real", "FS", "FR"}
    assert all((r.label == 0) == (r.family == "real") for r in records)
    r = records[0]
    assert r.video == str(r.path).rsplit("/", 1)[0]  # the video folder's full relative path
    train_fs = select(records, "train", ["FS"])
    assert {r.family for r in train_fs} == {"real", "FS"} and {r.split for r in train_fs} == {"train"}
    # The folder holding the JSON reads the same; a root override is honoured.
    assert load_records(tiny_data.parent) == (root, records)
    assert load_records(tiny_data, root=tiny_data.parent / "real")[0] == tiny_data.parent / "real"


@pytest.mark.parametrize("label,expected", [
    ("FF-real", 0), ("ForgeryLab_Real", 0), ("FSAll_Real", 0), ("REAL", 0), ("CelebDFv2_fake", 1),
    ("simswap_Fake", 1), ("FF-DF", 1), (0, 0), (1, 1), ("1", 1)])
def test_label_strings(label, expected):
    assert classify_label(label, "FF-DF", "x.json") == expected


@pytest.mark.parametrize("label", ["banana", "FF-F2F", "", 2, None, True])
def test_unknown_label_is_an_error(label):
    with pytest.raises(InputError, match="unknown label"):
        classify_label(label, "FF-DF", "x.json")


def test_deepfakebench_traps_fixed():
    """Backslashes, c23/c40 level, explicit family key, same-named videos of two methods, shared folders."""
    obj = dfb({
        "FF-real": {"train": {"c23": {"000": {"label": "FF-real", "frames": ["orig\\c23\\000\\0.png"]}},
                              "c40": {"000": {"label": "FF-real", "frames": ["orig/c40/000/0.png"]}}}},
        "FF-DF": {"train": {"c23": {"000": {"label": "FF-DF", "frames": ["DF/000/0.png", "DF/000/1.png"]}}}},
        "FF-FS": {"train": {"c23": {"000": {"label": "FF-FS", "family": "swap",
                                            "frames": ["FS/000/0.png"]}}}},
        "DS_Flat": {"test": {"a": {"label": "DS_Flat", "frames": ["flat/a.png"]},
                             "b": {"label": "DS_Flat", "frames": ["flat/b.png"]}}},
    })
    records = records_from_deepfakebench(obj, "x.json")
    by_path = {r.path: r for r in records}
    assert set(by_path) == {"orig/c23/000/0.png", "DF/000/0.png", "DF/000/1.png", "FS/000/0.png",
                            "flat/a.png", "flat/b.png"}
    assert by_path["orig/c23/000/0.png"] == Record("orig/c23/000/0.png", 0, "real", "orig/c23/000", "train",
                                                   "FF-real")
    assert by_path["DF/000/0.png"].family == "FF-DF" and by_path["FS/000/0.png"].family == "swap"
    assert by_path["DF/000/0.png"].video != by_path["FS/000/0.png"].video  # both named "000"
    assert by_path["flat/a.png"].video != by_path["flat/b.png"].video  # one folder, two videos
    assert by_path["flat/a.png"].family == "Flat"  # the dataset's own <Dataset>_<family> spelling
    with pytest.raises(InputError, match="FF-DF/train has compression level.s. c23 but not c40"):
        records_from_deepfakebench(obj, "x.json", compression="c40")  # never c23 in c40's place
    c40 = dfb({"FF-real": obj["DS"]["FF-real"]})
    assert records_from_deepfakebench(c40, "x.json", compression="c40")[0].path == "orig/c40/000/0.png"


def test_json_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"DS": {"g": ')
    with pytest.raises(InputError, match="bad.json: malformed JSON") as e:
        load_records(bad)
    assert "\n" not in str(e.value)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(dfb({"g": {"train": {"v": {"label": "weird", "frames": ["a.png"]}}}})))
    with pytest.raises(InputError, match="unknown.json: g/train/v: unknown label 'weird'"):
        load_records(unknown)
    with pytest.raises(InputError, match="data root folder not found"):
        load_records(unknown, root=tmp_path / "nowhere")
    with pytest.raises(InputError, match="dataset not found"):
        load_records(tmp_path / "missing.json")
    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps({"a": 1, "b": 2}))
    with pytest.raises(InputError, match="not a DeepfakeBench dataset JSON"):
        load_records(shape)
    noframes = tmp_path / "noframes.json"
    noframes.write_text(json.dumps(dfb({"g_Fake": {"train": {"v": {"label": "g_Fake"}}}})))
    with pytest.raises(InputError, match="no 'frames' list"):
        load_records(noframes)


def test_folder_tree(tmp_path):
    for rel in ["real/train/v1/0.png", "real/train/v1/1.png", "FS/train/v1/0.png", "FS/val/x.png",
                "FS/val/y.jpg", "FS/val/notes.txt"]:
        if rel.endswith(".txt"):
            (tmp_path / rel).write_text("not an image")
        else:
            write_png(tmp_path / rel)
    root, records = load_records(tmp_path)
    assert root == tmp_path
    assert sorted(records, key=lambda r: r.path) == [
        Record("FS/train/v1/0.png", 1, "FS", "FS/train/v1", "train", "FS"),
        Record("FS/val/x.png", 1, "FS", "FS/val/x.png", "val", "FS"),
        Record("FS/val/y.jpg", 1, "FS", "FS/val/y.jpg", "val", "FS"),
        Record("real/train/v1/0.png", 0, "real", "real/train/v1", "train", "real"),
        Record("real/train/v1/1.png", 0, "real", "real/train/v1", "train", "real"),
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        load_records(tmp_path / "empty")


def test_csv_manifest(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,family,video,split\nr\\0.png,real,,vr,train\nf/0.png,1,FS,,val\n"
                        "f/1.png,fake,,,\n")
    root, records = load_records(manifest)
    assert root == tmp_path
    assert records == [Record("r/0.png", 0, "real", "vr", "train", "real"),
                       Record("f/0.png", 1, "FS", "f/0.png", "val", "FS"),
                       Record("f/1.png", 1, "fake", "f/1.png", "test", "fake")]
    assert load_records(tmp_path)[1] == records  # the folder's one CSV
    (tmp_path / "bad.csv").write_text("file,y\na.png,1\n")
    with pytest.raises(InputError, match="several dataset files"):
        load_records(tmp_path)
    with pytest.raises(InputError, match="bad.csv: CSV manifest needs a header"):
        load_records(tmp_path / "bad.csv")
    (tmp_path / "lab.csv").write_text("path,label\na.png,maybe\n")
    with pytest.raises(InputError, match="lab.csv: line 2: unknown label 'maybe'"):
        load_records(tmp_path / "lab.csv")


def test_dataset_skips_missing_and_unreadable(tmp_path):
    write_png(tmp_path / "ok.png", 200)
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    records = [Record("ok.png", 1, "FS", "v", "train"), Record("gone.png", 0, "real", "w", "train"),
               Record("corrupt.png", 0, "real", "u", "train")]
    ds = ImageDataset(tmp_path, records, Preprocessing(size=4))
    assert len(ds) == 2 and len(ds.skipped) == 1 and "gone.png: image file not found" in ds.skipped[0]
    pixels, label, index = ds[0]
    assert pixels.shape == (3, 4, 4) and label == 1 and index == 0
    assert ds[1][1] == SKIPPED_LABEL
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    good_pixels, labels, indices, bad = drop_skipped(batch)
    assert labels.tolist() == [1] and indices.tolist() == [0] and bad.tolist() == [1]
    assert len(ds.note_skipped(bad)) == 1 and ds.note_skipped(bad) == []  # counted once
    assert "corrupt.png: not an image or video (the file holds text)" in ds.skipped[-1] and len(ds.skipped) == 2


def test_flip_is_a_function_of_seed_epoch_index(tmp_path):
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, :2] = 255  # left half white
    (tmp_path / "a.png").parent.mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    records = [Record("a.png", 1, "FS", "v", "train")] * 16
    flips = []
    for epoch in (0, 0, 1):
        ds = ImageDataset(tmp_path, records, Preprocessing(size=4), flip=True, seed=3)
        ds.set_epoch(epoch)
        flips.append([bool(ds[i][0][0, 0, 0] < ds[i][0][0, 0, 3]) for i in range(16)])
    assert flips[0] == flips[1] and flips[0] != flips[2]
    assert 0 < sum(flips[0]) < 16
    plain = ImageDataset(tmp_path, records, Preprocessing(size=4))
    assert all(plain[i][0][0, 0, 0] > plain[i][0][0, 0, 3] for i in range(16))


def test_decoded_cache_rereads_rewritten_files_and_stays_in_its_bound(tmp_path):
    cache = DecodedCache(max_bytes=2 * 4 * 4 * 3)  # room for two 4x4 images
    for name, value in (("a", 10), ("b", 20), ("c", 30)):
        write_png(tmp_path / f"{name}.png", value, size=4)
    first = cache.read(tmp_path / "a.png")
    assert cache.read(tmp_path / "a.png") is first and not first.flags.writeable
    cache.read(tmp_path / "b.png")
    cache.read(tmp_path / "c.png")  # evicts a (least recently used)
    assert cache.bytes == 2 * first.nbytes and cache.read(tmp_path / "a.png") is not first
    write_png(tmp_path / "b.png", 99, size=4)
    os.utime(tmp_path / "b.png", ns=(1, 1))  # a rewrite within the mtime resolution still changes the key
    assert int(cache.read(tmp_path / "b.png")[0, 0, 0]) == 99
    assert cache.read(tmp_path / "gone.png") is None and cache.read(tmp_path / "a.png").shape == (4, 4, 3)
    off = DecodedCache(max_bytes=0)
    assert off.read(tmp_path / "a.png") is not off.read(tmp_path / "a.png") and off.bytes == 0


def test_epoch_shuffle():
    s = EpochShuffle(10, seed=1)
    first = list(s)
    assert sorted(first) == list(range(10)) and list(s) == first
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(10))
    assert list(EpochShuffle(5, seed=1, shuffle=False)) == [0, 1, 2, 3, 4]

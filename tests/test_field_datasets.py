"""The field's dataset JSONs, as DeepfakeBench's and DF40's rearrangement writes them (tiny fixtures with the
real label groups, split shapes, compression levels and path prefixes; see the facts in the module docstring
of fakemerge.data.formats)."""

from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest

from fakemerge.data.families import DF40_FAMILIES, FamilyMap
from fakemerge.data.formats import read_dataset, sample_per_video
from fakemerge.data.options import DataOptions, combined, read
from fakemerge.data.records import select
from fakemerge.errors import InputError


def frames(folder: str, n: int = 2, shuffle: bool = False) -> list[str]:
    paths = [f"{folder}/{i:03d}.png" for i in range(n)]
    if shuffle:  # DeepfakeBench lists frames in os.scandir order
        random.Random(0).shuffle(paths)
    return paths


def video(label: str, folder: str, n: int = 2, **extra) -> dict:
    return {"label": label, "frames": frames(folder, n), **extra}


def write(tmp_path, name: str, groups: dict, dataset: str | None = None):
    path = tmp_path / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({dataset or name: groups}))
    return path


def touch_frames(root, records) -> None:
    for r in records:
        (root / r.path).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / r.path), np.full((8, 8, 3), 100, np.uint8))


def dfdc(tmp_path):
    """DFDC.json: `val` under each label group is ONE {label, frames} entry (the test loop overwrote it)."""
    groups = {}
    for group in ("DFDC_Real", "DFDC_Fake"):
        tag = group.split("_")[1].lower()
        groups[group] = {
            "train": {f"t{i}": video(group, f"DFDC/train/{tag}/t{i}") for i in range(2)},
            "test": {f"s{i}": video(group, f"DFDC/test/{tag}/s{i}") for i in range(2)},
            "val": video(group, f"DFDC/test/{tag}/s1"),
        }
    return write(tmp_path, "DFDC", groups)


def test_dfdc_val_single_entry_only_warns_for_other_splits(tmp_path):
    ds = read_dataset(dfdc(tmp_path), splits=["test"])
    assert {r.split for r in ds.records} == {"test"} and len(ds.records) == 8
    single = [w for w in ds.warnings if "a single {label, frames} entry" in w and "ignored" in w]
    assert len(single) == 2 and len(ds.warnings) == 3  # + DFDC_Fake is its own family (no map)
    assert ds.overlap == {}  # the malformed val was not used for anything
    with pytest.raises(InputError, match=r"DFDC.json: DFDC_Real/val is a single \{label, frames\} entry"):
        read_dataset(tmp_path / "DFDC.json", splits=["val"])
    assert read_dataset(tmp_path / "DFDC.json", splits=["train"]).records[0].split == "train"


def ffpp(tmp_path, levels=("c23", "c40"), methods=("FF-DF", "FF-F2F", "FF-FS", "FF-NT")):
    """FaceForensics++.json: label groups are methods, each split has a compression level."""
    groups = {}
    for group in ("FF-real", *methods):
        groups[group] = {split: {level: {f"{i:03d}": video(group, f"FF/{group}/{level}/{split}/{i:03d}")
                                         for i in range(2)} for level in levels}
                         for split in ("train", "val", "test")}
    return write(tmp_path, "FaceForensics++", groups)


def test_compression_is_chosen_never_substituted(tmp_path):
    path = ffpp(tmp_path)
    assert {r.path.split("/")[2] for r in read_dataset(path, splits=["test"]).records} == {"c23"}
    c40 = read_dataset(path, splits=["test"], compression="c40")
    assert {r.path.split("/")[2] for r in c40.records} == {"c40"}
    assert not any("does not apply" in w for w in c40.warnings)
    only40 = ffpp(tmp_path / "c40", levels=("c40",))
    with pytest.raises(InputError, match=r"FF-real/test has compression level\(s\) c40 but not c23 \(the default "
                                         r"compression c23; pass --compression c40"):
        read_dataset(only40, splits=["test"])
    with pytest.raises(InputError, match="but not c23"):
        read_dataset(only40, splits=["test"], compression="c23")
    with pytest.raises(InputError, match="--compression c0: choose one of c23, c40, raw"):
        read_dataset(path, compression="c0")
    # a file without levels cannot honour an explicit level: said, not silently ignored
    warnings = read_dataset(dfdc(tmp_path), splits=["test"], compression="c40").warnings
    assert any("DFDC.json: has no compression levels, so --compression c40 does not apply" in w for w in warnings)


def test_label_groups_keep_the_method_identity(tmp_path):
    """FF-FS is FaceForensics++'s FaceSwap method, not the FS family; DF_fake is not FF-DF."""
    ff = read_dataset(ffpp(tmp_path), splits=["test"])
    assert {r.family for r in ff.records if r.label} == {"FF-DF", "FF-F2F", "FF-FS", "FF-NT"}
    assert {r.family for r in ff.records if not r.label} == {"real"}
    assert "FF-DF, FF-F2F, FF-FS, FF-NT match no family map entry" in ff.warnings[0]
    deeper = write(tmp_path, "DeeperForensics-1.0", {
        "DF_real": {"test": {"a": video("DF_real", "DFo/source/a")}},
        "DF_fake": {"test": {"a": video("DF_fake", "DFo/manipulated/a")}}})
    assert {r.family for r in read_dataset(deeper).records} == {"real", "DF_fake"}
    dfdcp = write(tmp_path, "DFDCP", {
        "DFDCP_Real": {"test": {"r": video("DFDCP_Real", "P/r")}},
        "DFDCP_FakeA": {"test": {"a": video("DFDCP_FakeA", "P/a")}},
        "DFDCP_FakeB": {"test": {"b": video("DFDCP_FakeB", "P/b")}}})
    assert {r.family for r in read_dataset(dfdcp).records} == {"real", "DFDCP_FakeA", "DFDCP_FakeB"}
    assert {r.family for r in read_dataset(dfdc(tmp_path), splits=["test"]).records} == {"real", "DFDC_Fake"}
    uadfv = write(tmp_path, "UADFV", {"UADFV_Real": {"test": {"r": video("UADFV_Real", "U/r")}},
                                      "UADFV_Fake": {"test": {"f": video("UADFV_Fake", "U/f")}}})
    assert {r.family for r in read_dataset(uadfv).records} == {"real", "UADFV_Fake"}


def df40(tmp_path, methods=("simswap", "blendface", "fomm", "StyleGAN2", "e4e", "sd1.5"), prefix=""):
    """An all-methods DF40-style JSON: `<method>_Fake` / `<method>_Real` groups, frames under a prefix."""
    groups = {}
    for m in methods:
        for kind in ("Real", "Fake"):
            group = f"{m}_{kind}"
            groups[group] = {split: {f"{i}": video(group, f"{prefix}df40/{m}/{kind.lower()}/{split}/{i}")
                                     for i in range(2)} for split in ("train", "val", "test")}
    return write(tmp_path, "DF40_all", groups)


def test_df40_methods_map_to_their_families(tmp_path):
    ds = read_dataset(df40(tmp_path))
    fam = {r.method: r.family for r in ds.records if r.label}
    assert fam == {"simswap_Fake": "FS", "blendface_Fake": "FS", "fomm_Fake": "FR", "StyleGAN2_Fake": "EFS",
                   "e4e_Fake": "FE", "sd1.5_Fake": "sd1.5_Fake"}  # sd1.5 is not in DF40's family table
    assert "sd1.5_Fake match no family map entry" in ds.warnings[0]
    # `train --families FS` takes every face-swap method; a full method name takes that one method
    fs = select(ds.records, "train", ["FS"])
    assert {r.method for r in fs if r.label} == {"simswap_Fake", "blendface_Fake"}
    assert {r.method for r in select(ds.records, "train", ["simswap_Fake"]) if r.label} == {"simswap_Fake"}
    assert sum(len(v) for v in DF40_FAMILIES.values()) == 43  # DF40's 40 methods + FSAll, FRAll, EFSAll


def test_family_map_file(tmp_path):
    (tmp_path / "ffpp.yaml").write_text("FS: [FF-DF, FF-FS]\nFR: [FF-F2F, FF-NT]\nFE: [FF-typo]\n")
    fmap = FamilyMap.read(tmp_path / "ffpp.yaml")
    ds = read_dataset(ffpp(tmp_path), splits=["test"], family_map=fmap)
    assert {(r.method, r.family) for r in ds.records if r.label} == {
        ("FF-DF", "FS"), ("FF-FS", "FS"), ("FF-F2F", "FR"), ("FF-NT", "FR")}
    assert ds.warnings == [] and fmap.unused() == ["FF-typo"]
    _, notes = read(DataOptions(data=[str(tmp_path / "FaceForensics++.json")],
                                family_map=str(tmp_path / "ffpp.yaml")), ["test"])
    assert notes == [f"{tmp_path / 'ffpp.yaml'}: FF-typo match(es) no label group of the data"]
    (tmp_path / "bad.yaml").write_text("FF-DF: FS\n")
    with pytest.raises(InputError, match="bad.yaml: family 'FF-DF': 'FS' is not a list of names"):
        FamilyMap.read(tmp_path / "bad.yaml")
    (tmp_path / "twice.yaml").write_text("FS: [FF-DF]\nFR: [FF-DF]\n")
    with pytest.raises(InputError, match="'FF-DF' is listed under both FS and FR"):
        FamilyMap.read(tmp_path / "twice.yaml")


def celeb_df(tmp_path):
    """Celeb-DF-v2.json: DeepfakeBench's rearrangement writes the same videos as val and as test."""
    groups = {}
    for group, folder in (("CelebDFv2_real", "Celeb-real"), ("CelebDFv2_fake", "Celeb-synthesis")):
        test = {f"id{i}": video(group, f"Celeb-DF-v2/{folder}/frames/id{i}") for i in range(3)}
        groups[group] = {"train": {f"tr{i}": video(group, f"Celeb-DF-v2/{folder}/frames/tr{i}") for i in range(2)},
                         "val": test, "test": test}
    return write(tmp_path, "Celeb-DF-v2", groups)


def test_split_overlap_is_an_error_unless_allowed(tmp_path):
    path = celeb_df(tmp_path)
    with pytest.raises(InputError, match=r"Celeb-DF-v2.json: splits val and test share 6 video\(s\) and 12 "
                                         r"frame\(s\).*--allow-split-overlap"):
        read_dataset(path, splits=["test"])
    ds = read_dataset(path, splits=["test"], allow_split_overlap=True)
    assert ds.overlap == {"val/test": {"frames": 12, "videos": 6, "example": "Celeb-DF-v2/Celeb-real/frames/id0"}}
    assert "allowed by --allow-split-overlap" in ds.warnings[-1]
    assert read_dataset(path, splits=["train"]).overlap == {}  # train shares nothing
    # e4e (DF40): train == test under other video names
    e4e = {g: {"train": {"a": video(g, f"e4e/{g}/imgs", 3)}, "test": {"b": video(g, f"e4e/{g}/imgs", 3)}}
           for g in ("e4e_Real", "e4e_Fake")}
    with pytest.raises(InputError, match=r"splits train and test share 2 video\(s\) and 6 frame\(s\)"):
        read_dataset(write(tmp_path, "e4e_ff", e4e), splits=["test"])


def test_frames_per_video_evenly_spaced_in_frame_order(tmp_path):
    """32 frames listed in directory order; 8 are wanted: evenly spaced by frame number, not the first 8."""
    entry = {"label": "DS_FS", "frames": frames("DS/v0", 32, shuffle=True)}
    path = write(tmp_path, "DS", {"DS_FS": {"test": {"v0": entry}}})
    picked = [r.path for r in read_dataset(path, frames_per_video=8).records]
    assert picked == [f"DS/v0/{i:03d}.png" for i in (0, 4, 9, 13, 18, 22, 27, 31)]
    assert picked != sorted(entry["frames"])[:8]  # DeepfakeBench's frame_num takes these
    assert len(read_dataset(path, frames_per_video=40).records) == 32  # fewer frames than asked: all of them
    with pytest.raises(InputError, match="--frames-per-video 0: must be at least 1"):
        read_dataset(path, frames_per_video=0)


def test_sampling_keeps_listed_order_when_stems_are_not_numbers(tmp_path):
    records = read_dataset(write(tmp_path, "DS", {"DS_FS": {"test": {"v": {
        "label": "DS_FS", "frames": ["v/c.png", "v/a.png", "v/b.png"]}}}})).records
    assert [r.path for r in sample_per_video(records, 2)] == ["v/c.png", "v/b.png"]


def test_path_map_rewrites_df40_cluster_prefixes(tmp_path):
    cluster = "/Youtu_Pangu_Security_Public/youtu-pangu-public/zhiyuanyan/"
    path = df40(tmp_path, methods=("simswap",), prefix=cluster + "deepfakes_detection_datasets/")
    ds = read_dataset(path, splits=["test"], path_map=[(cluster + "deepfakes_detection_datasets/", "")])
    assert ds.records[0].path == "df40/simswap/real/test/0/000.png" and ds.warnings == []
    assert ds.records[0].video == "df40/simswap/real/test/0"
    ds = read_dataset(path, splits=["test"], path_map=[("/elsewhere/", "x/")])
    assert ds.records[0].path.startswith(cluster) and ds.warnings == [
        f"{path}: --path-map /elsewhere/=x/ matches no frame path"]
    with pytest.raises(ValueError, match="is not OLD=NEW"):
        DataOptions(data=[str(path)], path_map=["nothing"])


def test_missing_frames_name_the_root(tmp_path):
    from fakemerge.data.dataset import ImageDataset
    from fakemerge.models.preprocessing import Preprocessing

    ds = read_dataset(celeb_df(tmp_path), splits=["train"])
    with pytest.raises(InputError, match=rf"8/8 frames not found under {tmp_path} \(first: Celeb-DF-v2/.*\); "
                                         r"pass --root DIR"):
        ImageDataset(ds.root, ds.records, Preprocessing(size=8))
    touch_frames(tmp_path, ds.records[:1])
    assert len(ImageDataset(ds.root, ds.records, Preprocessing(size=8))) == 1  # some missing: skipped, counted


def test_several_datasets_combine_for_training(tmp_path):
    """DF40 ships one JSON per method, each with the same FF++ reals: the union counts each frame once."""
    a = read_dataset(df40(tmp_path / "a", methods=("simswap",)), splits=["train"])
    b = read_dataset(df40(tmp_path / "b", methods=("simswap",)), splits=["train"])
    root, records, notes = combined([a, a])
    assert len(records) == len(a.records) and notes == [f"{len(a.records)} frame(s) listed by several datasets "
                                                        "counted once"]
    root, records, notes = combined([a, b])
    assert len(records) == 2 * len(a.records) and notes == []
    assert all(r.path.startswith(str(tmp_path)) for r in records)


def test_train_config_carries_the_data_options(tmp_path):
    from fakemerge.config import TrainConfig, build

    cfg = build(TrainConfig, {"base": "b", "data": "x.json", "families": "FS", "out": "o", "compression": "c40",
                              "frames_per_video": 8, "path_map": ["/a/=b/"]}, "train.yaml")
    options = cfg.data_options()
    assert options.data == ["x.json"] and options.compression == "c40" and options.frames_per_video == 8
    assert options.prefix_pairs() == [("/a/", "b/")] and cfg.recipe()["compression"] == "c40"
    with pytest.raises(InputError, match="train.yaml: compression: Input should be 'c23', 'c40' or 'raw'"):
        build(TrainConfig, {"base": "b", "data": "x", "families": "FS", "out": "o", "compression": "c0"}, "train.yaml")

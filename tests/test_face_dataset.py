"""`fakemerge faces`: crops + DeepfakeBench JSON our reader loads; resume, no duplicates, crash safety,
parallel workers, failure summary, label groups, option checks."""

import json

import cv2
import numpy as np
import pytest
from mediafiles import write_video

from fakemerge.cli import main
from fakemerge.data import face_dataset, faces
from fakemerge.data.face_dataset import FacesJob, extract_faces
from fakemerge.data.faces import CropPolicy
from fakemerge.data.formats import load_records
from fakemerge.errors import InputError

NONE = CropPolicy("none", 32)


@pytest.fixture()
def inputs(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    write_video(folder / "clip.mp4", n=30)
    write_video(folder / "sub" / "clip.mp4", n=12)  # same stem, another folder: another video
    cv2.imwrite(str(folder / "photo.png"), np.full((40, 50, 3), 90, np.uint8))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def _job(out, **kw):
    return FacesJob(out, kw.pop("label", "fake"), kw.pop("policy", NONE), family=kw.pop("family", "FS"),
                    frames=kw.pop("frames", 4), **kw)


def test_crops_and_json_our_reader_loads_and_a_failure_summary(tmp_path, inputs):
    out = tmp_path / "out"
    summary = extract_faces([inputs], _job(out))
    assert len(summary.done) == 3 and summary.skipped == 0
    assert len(summary.failed) == 1 and "broken.jpg: not an image or video" in summary.failed[0]["error"]
    assert summary.label_dict_lines == ["  Faces_FS: 1"]  # DeepfakeBench's label_dict needs this line
    root, records = load_records(summary.json_path)
    assert root == out and all((out / r.path).is_file() for r in records)
    videos = sorted({r.video for r in records})
    assert videos == ["FS/test/clip", "FS/test/clip_2", "FS/test/photo"]
    assert sorted(r.path for r in records if r.video == "FS/test/clip") == [
        f"FS/test/clip/{i:03d}.png" for i in (0, 10, 19, 29)]
    assert {r.family for r in records} == {"FS"} and {r.label for r in records} == {1}
    state = json.loads((out / "faces_state.json").read_text())
    assert {e["status"] for e in state["inputs"].values()} == {"done", "failed"}


def test_rerun_skips_done_inputs_and_never_duplicates(tmp_path, inputs):
    out = tmp_path / "out"
    extract_faces([inputs], _job(out))
    before = (out / "Faces.json").read_text()
    again = extract_faces([inputs], _job(out))
    assert again.skipped == 3 and again.done == [] and len(again.failed) == 1  # the broken file is retried
    assert (out / "Faces.json").read_text() == before
    write_video(inputs / "clip.mp4", n=10)  # changed since: redone under the same name
    third = extract_faces([inputs], _job(out))
    assert [e["video"] for e in third.done] == ["clip"] and third.skipped == 2
    entry = json.loads((out / "Faces.json").read_text())["Faces"]["Faces_FS"]["test"]["clip"]
    assert entry["frames"] == [f"FS/test/clip/{i:03d}.png" for i in (0, 3, 6, 9)]
    assert sorted(p.name for p in (out / "FS" / "test" / "clip").iterdir()) == ["000.png", "003.png", "006.png",
                                                                                 "009.png"]  # old crops gone
    _, records = load_records(out / "Faces.json")
    assert len(records) == len({r.path for r in records}) == 4 + 4 + 1


def test_a_crash_loses_at_most_the_input_in_progress(tmp_path, inputs, monkeypatch):
    out = tmp_path / "out"
    real = face_dataset.extract_one
    calls = []

    def crash_on_third(item, video, job, stamp):
        calls.append(video)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies here
        return real(item, video, job, stamp)

    monkeypatch.setattr(face_dataset, "extract_one", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        extract_faces([inputs], _job(out))
    saved = json.loads((out / "Faces.json").read_text())["Faces"]["Faces_FS"]["test"]
    assert len(saved) == 1  # the first two inputs: the broken one (failed) and one video
    monkeypatch.setattr(face_dataset, "extract_one", real)
    summary = extract_faces([inputs], _job(out))
    assert summary.skipped == 1 and len(summary.done) == 2
    _, records = load_records(out / "Faces.json")
    assert sorted({r.video for r in records}) == ["FS/test/clip", "FS/test/clip_2", "FS/test/photo"]


def test_parallel_workers_give_the_same_dataset(tmp_path, inputs):
    one = extract_faces([inputs], _job(tmp_path / "one"))
    two = extract_faces([inputs], _job(tmp_path / "two", workers=2))
    table = json.loads((tmp_path / "one" / "Faces.json").read_text())
    assert json.loads((tmp_path / "two" / "Faces.json").read_text()) == table
    assert len(two.done) == len(one.done) == 3
    for rel in (f for v in table["Faces"]["Faces_FS"]["test"].values() for f in v["frames"]):
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()


class Blind:
    name = "blind"

    def detect(self, image, min_score):
        return []


def test_no_face_anywhere_fails_loudly_with_per_frame_statuses(tmp_path, inputs):
    faces.register_backend("blind", Blind)
    try:
        job = _job(tmp_path / "o", policy=CropPolicy("blind", 32, no_face="skip"), frames=3)
        summary = extract_faces([inputs / "clip.mp4"], job)
    finally:
        faces._FACTORIES.pop("blind")
        faces.get_backend.cache_clear()
    (entry,) = summary.failed
    assert entry["face_status"] == ["skipped"] * 3 and "no frame with a face" in entry["error"]
    assert len(entry["notes"]) == 3 and "frame 0: no face" in entry["notes"][0]


def test_resume_rules_guard_the_dataset(tmp_path, inputs):
    out = tmp_path / "out"
    extract_faces([inputs / "photo.png"], _job(out))
    with pytest.raises(InputError, match="made with other settings \\(size 32 now 64\\)"):
        extract_faces([inputs / "photo.png"], _job(out, policy=CropPolicy("none", 64)))
    summary = extract_faces([inputs / "photo.png"], _job(out, label="real", family=None))
    assert "already extracted into Faces_FS/test; not added to Faces_Real/test" in summary.failed[0]["error"]
    known = extract_faces([inputs / "clip.mp4"], _job(tmp_path / "o2", label="real", family=None, group="FF-real"))
    assert known.label_dict_lines == []  # DeepfakeBench's label_dict knows FF-real


@pytest.mark.parametrize("args,message", [
    (["--size", "0"], "--size 0"), (["--size", "-5"], "--size -5"), (["--margin", "0"], "--margin 0"),
    (["--frames", "0"], "--frames 0"), (["--face", "mtcnn"], "unknown face backend"),
    (["--label", "maybe"], "--label maybe"), (["--split", "dev"], "--split dev"), (["--workers", "0"], "--workers 0"),
    (["--family", "a/b"], "--family 'a/b'")])
def test_cli_checks_options_before_any_work(tmp_path, inputs, capsys, args, message):
    out = tmp_path / "never"
    argv = ["faces", str(inputs), "-o", str(out), "--label", "fake", "--face", "none", *args]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err and not out.exists()


def test_cli_summary_and_exit_code(tmp_path, inputs, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["faces", str(inputs), "-o", str(out), "--label", "fake", "--family", "FS", "--face", "none",
              "--size", "32", "--frames", "4"])
    assert e.value.code == 1
    captured = capsys.readouterr()
    assert "3 input(s) done" in captured.out and "Faces_FS: 1" in captured.out
    assert "broken.jpg: not an image or video" in captured.err
    main(["faces", str(inputs / "photo.png"), "-o", str(out), "--label", "fake", "--family", "FS", "--face", "none",
          "--size", "32", "--frames", "4"])
    assert "0 input(s) done (0 crops), 1 already done" in capsys.readouterr().out

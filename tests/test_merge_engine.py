"""The file-level merge engine: lazy IO, streaming writer, validation, heads, metadata, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fakemerge.config import parse_assignments
from fakemerge.errors import InputError
from fakemerge.io.safetensors import LazyState, SafetensorsWriter, save_tensors, tensors_sha256
from fakemerge.keys import HEAD_KEYS, PREFIX, canonical
from fakemerge.merging import merge, resolve_params
from fakemerge.merging.engine import merge_files, merge_heads
from fakemerge.merging.recipe import Recipe, recipe_from_merged
from fakemerge.merging.report import cosine_to_others, outlier_warnings
from fakemerge.models.backbone import backbone_hash, backbone_state
from fakemerge.models.detector import Detector, ModelMeta, read_meta, save_detector
from fakemerge.models.loading import load_base, load_detector


def make_specialist(
    base_dir: Path,
    path: Path,
    seed: int,
    family: str,
    scale: float = 1e-2,
    direction: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A specialist = base + a random (or given) task vector and a random head, as a fakemerge file."""
    model, base_id = load_base(base_dir)
    meta = ModelMeta(
        kind="specialist", method="full", families=[family], base_id=base_id, base_hash=backbone_hash(model)
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in model.state_dict().items():
            tau = direction[PREFIX + k] if direction else torch.randn(p.shape, generator=g) * scale
            p.add_(tau)
        detector = Detector(model)
        detector.head.weight.copy_(torch.randn(detector.head.weight.shape, generator=g))
        detector.head.bias.copy_(torch.randn(2, generator=g))
    save_detector(detector, path, meta)
    return path


@pytest.fixture(scope="module")
def specs(tiny_base, tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("specs")
    return [
        make_specialist(tiny_base, d / f"{fam}.safetensors", i, fam)
        for i, fam in enumerate(["FS", "FR", "EFS"])
    ]


def rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a model file through `edit(tensors) -> tensors` keeping its metadata."""
    tensors = load_file(str(src))
    with safe_open(str(src), "pt") as f:
        header = f.metadata()
    save_tensors(edit(dict(tensors)), dst, header)
    return dst


def merge_to(method: str, base, specialists, out: Path, params: dict | None = None, **options):
    """merge_files of a recipe made from these arguments."""
    return merge_files(Recipe(method, str(base), [str(p) for p in specialists], dict(params or {})), out, **options)


def backbone_of(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith(PREFIX)}


def test_lazy_state_reads_hf_dir_with_canonical_names_and_same_hash(tiny_base):
    model, _ = load_base(tiny_base)
    state = LazyState(tiny_base, float32=True)
    expected = backbone_state(model)
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert state.spec(next(iter(state)))[0] == torch.float32
    assert tensors_sha256(state) == backbone_hash(model) == tensors_sha256(expected)


def test_writer_any_order_and_metadata_written_late(tmp_path):
    tensors = {
        "b": torch.arange(6.0).reshape(2, 3),
        "a": torch.ones(4, dtype=torch.float16),
        "c": torch.tensor([1, 2, 3], dtype=torch.int64),
        "e": torch.zeros(0),
    }
    layout = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    for reserve, meta in [(1 << 16, {"x": "y" * 100}), (0, {"x": "y" * 5000})]:  # fits / must move the data
        path = tmp_path / f"w{reserve}.safetensors"
        with SafetensorsWriter(path, layout, {"x": "1"}, reserve=reserve) as w:
            for k in ["c", "e", "a", "b"]:
                w.write(k, tensors[k])
            w.close(meta)
        back = load_file(str(path))
        assert all(torch.equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype for k in tensors)
        with safe_open(str(path), "pt") as f:
            assert f.metadata() == meta
        assert not list(tmp_path.glob("*.grow"))


def test_writer_refuses_missing_and_misshapen_tensors(tmp_path):
    layout = {"a": (torch.float32, (2,)), "b": (torch.float32, (3,))}
    with pytest.raises(ValueError, match="shape"), SafetensorsWriter(tmp_path / "x", layout) as w:
        w.write("a", torch.zeros(3))
    with pytest.raises(ValueError, match="never written"), SafetensorsWriter(tmp_path / "y", layout) as w:
        w.write("a", torch.zeros(2))


@pytest.mark.parametrize(
    "method,params",
    [
        ("average", {}),
        ("task_arithmetic", {"scaling": 0.5}),
        ("ties", {"density": 0.3}),
        ("tsv", {}),
        ("dare", {}),
        ("r2m", {}),
    ],
)
def test_streamed_merge_equals_in_memory_merge(tiny_base, specs, tmp_path, method, params):
    out = tmp_path / "merged.safetensors"
    result = merge_to(method, tiny_base, specs, out, params)
    model, _ = load_base(tiny_base)
    hashes = [tensors_sha256(load_file(str(p))) for p in specs]
    heads = [tensors_sha256({k: load_file(str(p))[k] for k in HEAD_KEYS}) for p in specs]  # orders and seeds
    expected = merge(method, backbone_state(model), [backbone_of(p) for p in specs], fingerprints=heads, **params)
    got = backbone_of(out)
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    detector, meta = load_detector(out)  # the file loads through the one loader
    heads = [load_file(str(p)) for p in specs]
    assert torch.allclose(detector.head.weight, sum(h["head.weight"] for h in heads) / 3, atol=1e-6)
    assert meta == result.meta
    assert (meta.kind, meta.method, meta.families) == ("merged", method, ["FS", "FR", "EFS"])
    assert meta.base_hash == backbone_hash(model)
    assert [m["sha256"] for m in meta.recipe["models"]] == hashes
    assert meta.recipe["parameters"] == resolve_params(method, params)
    base = backbone_state(model)
    norms = [
        sum(((backbone_of(p)[k] - base[k]).double() ** 2).sum() for k in base).sqrt().item() for p in specs
    ]
    assert meta.extra["task_norms"] == pytest.approx(norms, rel=1e-5) == result.norms


def test_stored_recipe_round_trips(tiny_base, specs, tmp_path):
    out = tmp_path / "sub" / "merged.safetensors"
    recipe = Recipe("task_arithmetic", str(tiny_base), [str(p) for p in specs[:2]], {"scaling": 0.4}, "norm_matched")
    merge_files(recipe, out)
    recipe = recipe_from_merged(out)
    assert recipe.method == "task_arithmetic" and recipe.head == "norm_matched"
    assert recipe.parameters == {"scaling": 0.4}
    assert [Path(m).resolve() for m in recipe.models] == [p.resolve() for p in specs[:2]]
    assert Path(recipe.base).resolve() == Path(tiny_base).resolve()
    assert recipe.hashes == [tensors_sha256(load_file(str(p))) for p in specs[:2]]


def test_merge_heads_average_and_norm_matched():
    h1 = {"head.weight": torch.full((2, 2), 1.0), "head.bias": torch.zeros(2)}
    h2 = {"head.weight": torch.full((2, 2), 3.0), "head.bias": torch.zeros(2)}
    assert torch.equal(merge_heads([h1, h2], "average")["head.weight"], torch.full((2, 2), 2.0))
    # norms 2 and 6, mean 4: both rescaled to norm 4 → entries 2 and 2
    assert torch.allclose(merge_heads([h1, h2], "norm_matched")["head.weight"], torch.full((2, 2), 2.0))
    with pytest.raises(InputError, match="head"):
        merge_heads([h1], "sum")


def bad_inputs(spec: Path, tmp_path: Path):
    key = f"{PREFIX}encoder.layers.0.mlp.fc1.weight"

    def drop(t):
        del t[key]
        return t

    def nan(t):
        t[key][0, 0] = float("nan")
        return t

    return {
        "missing": (rewrite(spec, tmp_path / "missing.safetensors", drop), "fc1.weight is missing"),
        "extra": (
            rewrite(
                spec, tmp_path / "extra.safetensors", lambda t: {**t, PREFIX + "x.weight": torch.ones(1)}
            ),
            "unexpected tensor vision_model.x.weight",
        ),
        "shape": (
            rewrite(spec, tmp_path / "shape.safetensors", lambda t: {**t, key: t[key][:-1]}),
            "has shape",
        ),
        "dtype": (
            rewrite(spec, tmp_path / "dtype.safetensors", lambda t: {**t, key: t[key].double()}),
            "dtype",
        ),
        "nan": (rewrite(spec, tmp_path / "nan.safetensors", nan), "fc1.weight contains NaN"),
        "nohead": (
            rewrite(
                spec,
                tmp_path / "nohead.safetensors",
                lambda t: {k: v for k, v in t.items() if k != "head.bias"},
            ),
            "head.bias",
        ),
    }


@pytest.mark.parametrize("case", ["missing", "extra", "shape", "dtype", "nan", "nohead"])
def test_bad_specialist_is_refused_naming_file_and_tensor(tiny_base, specs, tmp_path, case):
    bad, message = bad_inputs(specs[1], tmp_path)[case]
    out = tmp_path / "out" / "merged.safetensors"
    with pytest.raises(InputError, match=message) as e:
        merge_to("average", tiny_base, [specs[0], bad], out)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_other_base_refused_unless_forced(tiny_base, specs, tmp_path):
    meta = read_meta(specs[1])
    meta.base_hash = "0" * 64
    other = rewrite(specs[1], tmp_path / "other.safetensors", lambda t: t)
    save_tensors(load_file(str(other)), other, meta.to_header())
    out = tmp_path / "merged.safetensors"
    with pytest.raises(InputError, match="different base"):
        merge_to("average", tiny_base, [specs[0], other], out)
    assert not out.exists()
    merge_to("average", tiny_base, [specs[0], other], out, force=True)
    assert out.exists()


def test_changed_model_refused_against_expected_hash(tiny_base, specs, tmp_path):
    with pytest.raises(InputError, match="content changed"):
        merge_files(Recipe("average", str(tiny_base), [str(p) for p in specs[:2]], hashes=["1" * 64, None]),
                    tmp_path / "m.safetensors")


def test_crash_mid_merge_leaves_no_file(tiny_base, specs, tmp_path, monkeypatch):
    from fakemerge.merging.registry import MergeRun

    real = MergeRun.__iter__

    def crashing(self):
        for i, item in enumerate(real(self)):
            if i == 3:
                raise RuntimeError("boom")
            yield item

    monkeypatch.setattr(MergeRun, "__iter__", crashing)
    with pytest.raises(RuntimeError, match="boom"):
        merge_to("average", tiny_base, specs, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_outlier_rule_on_gram_matrices():
    base = torch.randn(4, 1000, dtype=torch.float64)
    shared = torch.randn(1000, dtype=torch.float64)
    taus = base * 0.5 + shared  # similar specialists
    names = ["a", "b", "c", "d"]
    assert outlier_warnings(names, taus @ taus.T) == []
    big = taus.clone()
    big[2] *= 10
    (w,) = outlier_warnings(names, big @ big.T)
    assert w.startswith("c: task-vector norm")
    flipped = taus.clone()
    flipped[1] = -flipped[1]
    (w,) = outlier_warnings(names, flipped @ flipped.T)
    assert w.startswith("b: task vector points away")
    assert outlier_warnings(names[:2], big[:2] @ big[:2].T) == []  # two: no odd one out
    c = cosine_to_others(taus @ taus.T)
    others = taus.sum(0) - taus[0]
    assert c[0].item() == pytest.approx(torch.nn.functional.cosine_similarity(taus[0], others, dim=0).item())


def test_report_and_poisoned_specialist_warning(tiny_base, specs, tmp_path):
    model, _ = load_base(tiny_base)
    base = backbone_state(model)
    tau = {k: backbone_of(specs[0])[k] - base[k] for k in base}
    poisoned = make_specialist(
        tiny_base, tmp_path / "poison.safetensors", 9, "FE", direction={k: -20 * v for k, v in tau.items()}
    )
    result = merge_to("r2m", tiny_base, [*specs, poisoned], tmp_path / "m.safetensors", report_dir=tmp_path / "rep")
    assert any(w.startswith(str(poisoned)) for w in result.warnings)
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["warnings"] == result.warnings and len(report["task_cosine"]) == 4
    assert {
        "report.json",
        "task_cosine.png",
        "task_norms.png",
        "norm_matching_weights.png",
        "r2m_core_energy.png",
    } <= {p.name for p in result.report_files}
    assert all(p.stat().st_size > 0 for p in result.report_files)


def test_merge_set_values_parse_like_train_settings():
    assert parse_assignments(["a=1", "b=0.5", "c=true", "d=1e-3", "e=null", "f=balanced"], "--set") == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": 1e-3,
        "e": None,
        "f": "balanced",
    }
    with pytest.raises(InputError, match="key=value"):
        parse_assignments(["alpha"], "--set")


def test_canonical_spelling_of_base_file(tiny_base, specs, tmp_path):
    """A fakemerge base file (prefixed names) gives the same merge as the HF directory (bare names)."""
    model, _ = load_base(tiny_base)
    base_file = tmp_path / "base.safetensors"
    save_detector(Detector(model), base_file, ModelMeta(kind="base", base_id=str(tiny_base)))
    a = merge_to("average", base_file, specs[:2], tmp_path / "a.safetensors")
    b = merge_to("average", tiny_base, specs[:2], tmp_path / "b.safetensors")
    assert a.meta.base_hash == b.meta.base_hash
    assert canonical(backbone_of(a.out)).keys() == backbone_of(b.out).keys()


def test_recipe_file_errors(tmp_path):
    from fakemerge.merging.recipe import load_recipe

    p = tmp_path / "r.yaml"
    for text, message in [
        ("method: r2m\nmodels: [a.safetensors]\n", "exactly one of 'base' and 'base_model'"),
        ("method: r2m\nbase: b\nmodels: [a]\nalpha: 1\n", "alpha: Extra inputs are not permitted"),
        ("method: [\n", "not valid YAML"),
        ("method: r2m\nbase: b\nmodels: [{path: a}]\n", r"models\.0\.model: Field required"),
    ]:
        p.write_text(text)
        with pytest.raises(InputError, match=message):
            load_recipe(p)


def test_progress_reports_every_pass(tiny_base, specs, tmp_path):
    calls = []
    merge_to("average", tiny_base, specs[:2], tmp_path / "m.safetensors", progress=lambda *a, **_: calls.append(a))
    n = len(LazyState(tiny_base))
    assert calls[0] == ("merge", 1, n) and calls[-1] == ("merge", n, n)  # one pass: the merge reads and hashes
    calls.clear()
    merge_to("r2m", tiny_base, specs[:2], tmp_path / "r.safetensors", progress=lambda *a, **_: calls.append(a))
    stages = list(dict.fromkeys(c[0] for c in calls))
    assert stages == ["grams", "r2m: residuals", "merge"] and calls[-1] == ("merge", n, n)


def test_add_specialists_rebuilds_the_stored_recipe_plus_the_new_one(tiny_base, specs, tmp_path):
    from fakemerge.merging.engine import add_specialists

    two = merge_to("r2m", tiny_base, specs[:2], tmp_path / "two.safetensors", {"alpha": 0.4}).out
    added = add_specialists(two, [specs[2]], tmp_path / "added.safetensors")
    direct = merge_to("r2m", tiny_base, specs, tmp_path / "direct.safetensors", {"alpha": 0.4})
    ta, td = load_file(str(added.out)), load_file(str(direct.out))
    assert ta.keys() == td.keys() and all(torch.equal(ta[k], td[k]) for k in ta)
    assert added.meta.recipe["parameters"]["alpha"] == 0.4 and len(added.meta.recipe["models"]) == 3
    with pytest.raises(InputError, match="already part"):
        add_specialists(two, [specs[0]], tmp_path / "dup.safetensors")


def count_reads(monkeypatch) -> dict:
    """Counts every tensor read from a safetensors file, by (file name, tensor)."""
    from fakemerge.io import safetensors as st

    reads: dict = {}
    real = st._SafetensorsFile.read

    def counted(self, key):
        reads[(self.path.name, key)] = reads.get((self.path.name, key), 0) + 1
        return real(self, key)

    monkeypatch.setattr(st._SafetensorsFile, "read", counted)
    return reads


@pytest.mark.parametrize("method, passes", [("average", 1), ("dare", 1), ("tsv", 1), ("r2m", 3), ("ties", 4)])
def test_every_input_tensor_is_read_once_per_pass_and_hashed_in_it(tiny_base, specs, tmp_path, monkeypatch,
                                                                     method, passes):
    reads = count_reads(monkeypatch)
    result = merge_to(method, tiny_base, specs, tmp_path / "m.safetensors")
    spec_reads = {k: v for k, v in reads.items() if k[0] in {p.name for p in specs} and k[1].startswith(PREFIX)}
    assert len(spec_reads) == 3 * len(LazyState(specs[0])) and set(spec_reads.values()) == {passes}
    assert [m["sha256"] for m in result.meta.recipe["models"]] == [tensors_sha256(load_file(str(p))) for p in specs]
    model, _ = load_base(tiny_base)
    assert result.meta.base_hash == backbone_hash(model)


def test_specialists_with_one_head_are_ordered_by_all_their_content(tiny_base, specs, tmp_path):
    """Equal heads would make the head fingerprints tie: the engine hashes everything first, and any order of
    the specialists still gives the same bytes."""
    same_head = rewrite(specs[1], tmp_path / "same_head.safetensors",
                        lambda t: {**t, **{k: load_file(str(specs[0]))[k] for k in HEAD_KEYS}})
    inputs = [specs[0], same_head, specs[2]]
    a = merge_to("dare", tiny_base, inputs, tmp_path / "a.safetensors")
    b = merge_to("dare", tiny_base, inputs[::-1], tmp_path / "b.safetensors")
    ta, tb = backbone_of(a.out), backbone_of(b.out)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert a.norms == b.norms[::-1]

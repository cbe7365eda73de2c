"""A fakemerge model as a Hugging Face directory, and the model card that says what it is.

    DIR/config.json              CLIPVisionConfig (`CLIPVisionModel.from_pretrained(DIR)` loads it, 4.x and 5.x)
    DIR/model.safetensors        the backbone (`vision_model.*`); header `format: pt` + the model's metadata
    DIR/head.safetensors         the linear head: P(fake) = softmax(head(pooler_output))[1]
    DIR/preprocessor_config.json CLIPImageProcessor settings matching the model's preprocessing
    DIR/README.md                the model card (`fakemerge info MODEL` prints the same text)

The head lives in its own file because transformers reports every tensor a CLIPVisionModel does not know.
The directory is written beside DIR and renamed into place, so a crash never leaves half an export; loading
DIR with fakemerge gives the detector back (`fakemerge.models.loading`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from fakemerge.errors import InputError
from fakemerge.io.safetensors import SafetensorsWriter, save_tensors, tensors_sha256
from fakemerge.keys import HEAD_KEYS
from fakemerge.models.backbone import config_from_dict
from fakemerge.models.detector import ModelMeta
from fakemerge.models.loading import HEAD_FILE, Source, open_source, quiet_transformers
from fakemerge.models.preprocessing import Preprocessing

_PIL_RESAMPLE = {"bicubic": 3, "auto": 3, "bilinear": 2, "area": 4}  # closest PIL filter of each resize mode


def export_hf(model: str | os.PathLike, out_dir: str | os.PathLike, *, evaluation: str | os.PathLike | None = None,
              overwrite: bool = False) -> Path:
    """Write MODEL (any detector the loader opens) as a Hugging Face directory OUT_DIR; returns OUT_DIR."""
    source = open_source(model)
    if source.head is None:
        raise InputError(f"{model}: has no head, so it is not a detector to export")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (pass --overwrite to replace it)")
    card = model_card(source, evaluation)
    meta = source.as_meta()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with quiet_transformers():
            config = config_from_dict(source.config)
            config.architectures = ["CLIPVisionModel"]
            config.save_pretrained(tmp)
        layout = {k: (source.state[k].dtype, tuple(source.state[k].shape)) for k in source.state}
        with SafetensorsWriter(tmp / "model.safetensors", layout, meta.to_header()) as writer:
            for k in layout:
                writer.write(k, source.state[k])
        save_tensors({k: source.head[k] for k in HEAD_KEYS}, tmp / HEAD_FILE, {"format": "pt"})
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor_config(source.preprocessing), indent=2)
                                                      + "\n")
        (tmp / "README.md").write_text(card)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def processor_config(prep: Preprocessing) -> dict:
    """CLIPImageProcessor settings for `prep` (a square crop resized to size×size; centre crop: no resize)."""
    crop = prep.resize == "center_crop"
    return {"image_processor_type": "CLIPImageProcessor", "do_convert_rgb": True, "do_resize": not crop,
            "size": {"shortest_edge": prep.size}, "resample": _PIL_RESAMPLE.get(prep.resize, 3),
            "do_center_crop": True, "crop_size": {"height": prep.size, "width": prep.size}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(prep.mean),
            "image_std": list(prep.std)}


def model_card(source: Source, evaluation: str | os.PathLike | None = None) -> str:
    """The README.md of an export: what the model is, its base, recipe (with hashes), preprocessing and, when
    an eval report is given, its evaluation table."""
    meta = source.as_meta()
    name = Path(source.spec).name.removesuffix(".safetensors")
    prep = source.preprocessing
    hub_base = meta.base_id if meta.base_id and "/" in meta.base_id and not Path(meta.base_id).exists() else None
    lines = ["---", "library_name: fakemerge", "pipeline_tag: image-classification",
             "tags: [deepfake-detection, clip, model-merging]", *([f"base_model: {hub_base}"] if hub_base else []),
             "---", "", f"# {name}", "",
             f"A fakemerge **{meta.kind}** detector ({meta.method or 'no method recorded'}) for forgery families: "
             f"{', '.join(meta.families) or 'not recorded'}. CLIP ViT vision tower "
             f"({source.config['num_hidden_layers']} layers, hidden {source.config['hidden_size']}, "
             f"{source.config['image_size']} px input) + a linear head; P(fake) = "
             "softmax(head(pooler_output))[1]" + (f", decision threshold {meta.threshold:.4g} (calibrated)."
                                                  if meta.threshold is not None else ", uncalibrated (threshold 0.5)."),
             "", "## Use", "", "```python", "import torch", "from safetensors.torch import load_file",
             "from transformers import CLIPVisionModel", "",
             "backbone = CLIPVisionModel.from_pretrained(DIR)", "head = load_file(f\"{DIR}/head.safetensors\")",
             "features = backbone(pixel_values=x).pooler_output  # x prepared as below",
             "p_fake = (features @ head['head.weight'].T + head['head.bias']).softmax(-1)[:, 1]", "```", "",
             "or `fakemerge detect DIR image.png` (fakemerge reads this directory as the detector).", "",
             "## Preprocessing", "", f"{prep.describe()} — {source.origin}.",
             "`preprocessor_config.json` holds the closest CLIPImageProcessor settings"
             + (" (it cannot tile images smaller than the crop)." if prep.resize == "center_crop" else
                "; fakemerge resizes with OpenCV, which differs slightly from PIL's resampling."), "",
             "## Base", "", f"- id: `{meta.base_id or 'not recorded'}`",
             f"- content hash (sha256 of the backbone tensors): `{meta.base_hash or 'not recorded'}`", "",
             *_recipe_lines(meta), "## Files", "",
             f"- backbone content hash: `{tensors_sha256(source.state)}`",
             f"- fakemerge {meta.version}", ""]
    if evaluation is not None:
        lines += _evaluation_lines(evaluation)
    return "\n".join(lines)


def _recipe_lines(meta: ModelMeta) -> list[str]:
    recipe = meta.recipe or {}
    lines = ["## Recipe", ""]
    if meta.kind == "merged" and recipe.get("models"):
        lines += [f"Merged with `{recipe.get('method')}`; parameters: `{json.dumps(recipe.get('parameters', {}))}`; "
                  f"heads: {recipe.get('head', 'average')}.", "", "| specialist | families | sha256 |", "|---|---|---|"]
        lines += [f"| {m['model']} | {', '.join(m.get('families') or []) or '-'} | `{m.get('sha256') or '-'}` |"
                  for m in recipe["models"]]
    elif recipe:
        lines += ["```yaml", *(f"{k}: {json.dumps(v)}" for k, v in recipe.items()), "```"]
    else:
        lines.append("Not recorded.")
    return [*lines, ""]


def _evaluation_lines(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    path = path / "report.json" if path.is_dir() else path
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        families = report["families"]
        rows = [*families.items(), ("overall", report["overall"])]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path}: not a fakemerge eval report.json ({type(e).__name__}: {e})") from None
    lines = ["## Evaluation", "",
             f"`{report.get('data', '?')}`, split {report.get('split', '?')}; video scores: "
             f"{report.get('video_agg', 'mean')} of frame scores; each family scored against all reals; EER "
             "interpolated where FPR and FNR cross (DeepfakeBench reports the nearest ROC point).", "",
             "| family | AUC | AP | EER | video AUC | reals | fakes |", "|---|---|---|---|---|---|---|"]
    for fam, m in rows:
        cells = [_fmt(m.get(k)) for k in ("auc", "ap", "eer", "video_auc")]
        lines.append(f"| {fam} | {' | '.join(cells)} | {m.get('n_real', '')} | {m.get('n_fake', '')} |")
    for pair, o in (report.get("split_overlap") or {}).items():
        lines += ["", f"Split overlap allowed: {pair} share {o['videos']} video(s), {o['frames']} frame(s)."]
    return [*lines, ""]


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4f}"

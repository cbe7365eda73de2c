"""Train one detector (a specialist, or a joint model when several families are given) with `accelerate`.

The same code runs on one CPU, one GPU, or under `accelerate launch` on many (DDP: the training loader is
sharded, validation predictions are gathered). Mixed precision (bf16 / fp16) is accelerate's autocast around
the model's forward; gradient accumulation adds `grad_accum` batches' gradients (DDP synchronises only the
last) before each optimizer step. The model is on the training device before the method prepares it, so
layer scoring and SVDs run there. Reproducible: every random choice is a function of the seed
and the epoch (head init, shuffling, flips), so a run resumed from OUT.ckpt/ matches an uninterrupted one
bit for bit. The best epoch by validation metric is kept; the test split is never read. Only the main
process writes: the per-epoch log OUT.log.jsonl, the checkpoint, and — once, at the end — the model file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from torch.nn import functional as F
from torch.utils.data import DataLoader

from fakemerge.config import TrainConfig
from fakemerge.data import options as data_options
from fakemerge.data.dataset import EpochShuffle, ImageDataset, drop_skipped
from fakemerge.data.records import Record, select
from fakemerge.errors import InputError
from fakemerge.evaluation import metrics
from fakemerge.io import write_text
from fakemerge.io.safetensors import tensors_sha256
from fakemerge.models.backbone import build_backbone
from fakemerge.models.detector import Detector, ModelMeta, save_detector
from fakemerge.models.loading import open_source
from fakemerge.progress import Progress, silent
from fakemerge.training import checkpoint, methods


@dataclass
class TrainResult:
    out: Path
    selected_epoch: int | None
    val: dict
    history: list[dict]
    skipped: list[str] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    is_main_process: bool = True


def train(config: TrainConfig, progress: Progress = silent) -> TrainResult:
    """Progress: stage "train" per batch (info: epoch, loss; notes: skipped images, resume) and
    stage "epoch" after each epoch (note: its summary line; info `record`: its history record)."""
    config = config.model_copy(update={"mixed_precision": _precision(config.mixed_precision)})
    accelerator = _accelerator(config.mixed_precision)
    main = accelerator.is_main_process
    emit = progress if main else silent
    position = {"done": 0, "total": None}

    def note(message: str, **info) -> None:
        emit("train", position["done"], position["total"], note=message, **info)
    method = methods.get(config.method)
    out = Path(config.out)
    ckpt = checkpoint.checkpoint_dir(out)

    splits = ["train", config.val_split] if config.val_split else ["train"]
    datasets, data_notes = data_options.read(config.data_options(), splits)
    root, records, combine_notes = data_options.combined(datasets)
    data_notes = [w for ds in datasets for w in ds.warnings] + data_notes + combine_notes
    for message in data_notes:
        note(message, warning=message)
    train_records, val_records = _splits(records, config, ", ".join(config.data))
    source = open_source(config.base)
    base_hash = tensors_sha256(source.state)  # the hash the merge engine computes for this base
    base = build_backbone(source.config, source.state)
    torch.manual_seed(config.seed)
    detector = Detector(base, source.preprocessing)  # inputs prepared as the base's (its file says how)

    train_set = ImageDataset(root, train_records, detector.preprocessing, flip=config.flip, seed=config.seed)
    val_set = ImageDataset(root, val_records, detector.preprocessing)
    for message in train_set.skipped + val_set.skipped:
        note(f"skipped: {message}", skipped=message)
    sampler = EpochShuffle(len(train_set), config.seed)
    workers = config.num_workers if config.num_workers is not None else (0 if accelerator.device.type == "cpu" else 2)
    loader_args = dict(batch_size=config.batch_size, num_workers=workers, pin_memory=accelerator.device.type == "cuda")
    train_loader = DataLoader(train_set, sampler=sampler, drop_last=len(train_set) > config.batch_size,
                              **loader_args)
    val_loader = DataLoader(val_set, **loader_args)

    torch.manual_seed(config.seed)
    detector.to(accelerator.device)  # layer scoring and subspace SVDs run on the training device
    prepared = method.fn(detector, dict(config.method_options), _probe_batches(train_set, config.seed, loader_args))
    methods.freeze_all_but(detector, prepared.params)
    trainable_names = [n for n, p in detector.named_parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in prepared.params)
    n_total = sum(p.numel() for p in detector.parameters())

    optimizer = _optimizer(prepared.params, config, config.lr or method.default_lr)
    torch_optimizer = optimizer  # accelerate wraps it; methods' epoch hooks get the plain one
    model, optimizer, train_loader, val_loader = accelerator.prepare(detector, optimizer, train_loader,
                                                                     val_loader)
    steps = len(train_loader) if config.max_steps_per_epoch is None else min(
        len(train_loader), config.max_steps_per_epoch * config.grad_accum)  # batches per epoch
    scheduler = _scheduler(optimizer, config.schedule, math.ceil(steps / config.grad_accum) * config.epochs)

    history: list[dict] = []
    best = {"epoch": None, "val": {}, "tensors": _trainable_state(detector, trainable_names), "info": {}}
    start = 0
    saved = checkpoint.load(ckpt) if config.resume else None
    if saved is not None:
        # Checkpoints made before mixed precision and accumulation existed trained with what are now defaults.
        recipe = {"mixed_precision": "no", "grad_accum": 1, **saved.state.get("recipe", {})}
        if recipe != _jsonable(config.recipe()):
            raise InputError(f"{ckpt}: checkpoint was made with different settings; "
                             "rerun without --resume to start over")
        _load_trainable(detector, saved.trainable)
        optimizer.load_state_dict(saved.optim["optimizer"])
        scheduler.load_state_dict(saved.optim["scheduler"])
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(saved.optim["scaler"])
        history = saved.state["history"]
        best = {"epoch": saved.state["best_epoch"], "val": saved.state["best_val"], "tensors": saved.best,
                "info": saved.state.get("best_info", {})}
        start = saved.epochs_done
        note(f"resumed from {ckpt} after epoch {start}", resumed=start)
    elif config.resume:
        note(f"no checkpoint at {ckpt}; starting from scratch")

    position.update(done=start * steps, total=config.epochs * steps)
    note(f"training {config.method}: {len(train_set)} train / {len(val_set)} val images, "
         f"{n_trainable:,} of {n_total:,} parameters trained")
    for epoch in range(start, config.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        train_loader.set_epoch(epoch)  # accelerate's loader re-seeds its sampler from its own epoch count
        info = prepared.on_epoch(epoch, torch_optimizer) if prepared.on_epoch is not None else {}
        train_loss = _train_epoch(model, train_loader, optimizer, scheduler, prepared, steps, config.grad_accum,
                                  accelerator, train_set, emit, note, epoch, position)
        val = _evaluate(model, val_loader, accelerator, val_set, note) if val_records else {}
        record = {"epoch": epoch + 1, "train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()},
                  "lr": optimizer.param_groups[0]["lr"], **info}
        if _better(val, best["val"], config.select_metric) or not val_records:
            best = {"epoch": epoch + 1, "val": val, "tensors": _trainable_state(detector, trainable_names),
                    "info": info}
        record["selected"] = best["epoch"]
        history.append(record)
        if main:
            state = {"recipe": config.recipe(), "history": history, "best_epoch": best["epoch"],
                     "best_val": best["val"], "best_info": best["info"]}
            optim = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            if accelerator.scaler is not None:  # fp16 loss scale: part of the exact resume
                optim["scaler"] = accelerator.scaler.state_dict()
            checkpoint.save(ckpt, epoch + 1, _trainable_state(detector, trainable_names), best["tensors"],
                            optim, state)
            _write_log(out, history)
        accelerator.wait_for_everyone()
        emit("epoch", epoch + 1, config.epochs, note=_summary(record, config.epochs), record=record)

    skipped = train_set.skipped + val_set.skipped
    if main:
        _load_trainable(detector, best["tensors"])
        extra = {"val": best["val"], "history": history, "selected_epoch": best["epoch"],
                 "selected_by": f"val_{config.select_metric}" if val_records else "last epoch",
                 "trainable_params": n_trainable, "skipped": len(skipped),
                 "processes": accelerator.num_processes, "data_warnings": data_notes,
                 "split_overlap": {ds.source: ds.overlap for ds in datasets if ds.overlap}}
        extra.update(prepared.finalize(detector) or {})
        extra.update(best["info"])  # what the method's epoch hook said about the saved weights
        meta = ModelMeta(kind="specialist" if len(config.families) == 1 else "joint", method=config.method,
                         families=list(config.families), base_id=source.id, base_hash=base_hash,
                         recipe=config.recipe(), extra=extra)
        save_detector(detector, out, meta)
        if prepared.write_artifacts is not None:
            prepared.write_artifacts(out, extra)
        if not config.keep_checkpoint:
            shutil.rmtree(ckpt, ignore_errors=True)
    accelerator.wait_for_everyone()
    return TrainResult(out=out, selected_epoch=best["epoch"], val=best["val"], history=history,
                       skipped=skipped, trainable_params=n_trainable, total_params=n_total,
                       is_main_process=main)


def _precision(asked: str | None) -> str:
    """The mixed precision to train with: the setting, else `accelerate launch`'s (its environment)."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launched not in ("no", "bf16", "fp16"):
        raise InputError(f"accelerate launch --mixed_precision {launched}: not supported (choose no, bf16, fp16)")
    if asked is None:
        return launched
    if launched != "no" and launched != asked:
        raise InputError(f"mixed_precision {asked} contradicts accelerate launch --mixed_precision {launched}")
    return asked


def _accelerator(precision: str) -> Accelerator:
    """An Accelerator for `precision`. accelerate keeps one precision per process; a later training in the
    same single process (a notebook, the demo) may change it. fp16 on a CPU is refused: accelerate would
    silently train in float32 there."""
    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and current != precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    try:
        accelerator = Accelerator(mixed_precision=precision)
    except ValueError as e:
        raise InputError(f"mixed_precision {precision}: {e}") from None
    if precision == "fp16" and accelerator.device.type == "cpu":
        raise InputError("mixed_precision fp16 needs a GPU (accelerate has no fp16 autocast on CPU); use bf16")
    return accelerator


def _splits(records: list[Record], config: TrainConfig, source: str) -> tuple[list[Record], list[Record]]:
    """Train/val records of the chosen families or methods (+ reals); each needs both classes."""
    known = sorted({r.family for r in records if r.label == 1})
    methods = {r.method for r in records if r.label == 1}
    unknown = [f for f in config.families if f not in known and f not in methods]
    if unknown:
        raise InputError(f"{source}: no fakes of family {', '.join(unknown)} (families: {', '.join(known)})")
    train = select(records, "train", config.families)
    _need_both_classes(train, "train", config, source, "")
    val = []
    if config.val_split:
        val = select(records, config.val_split, config.families)
        _need_both_classes(val, config.val_split, config, source,
                           " (use --set val_split=null to train without validation)")
    return train, val


def _need_both_classes(part: list[Record], split: str, config: TrainConfig, source: str, hint: str) -> None:
    labels = {r.label for r in part}
    if labels != {0, 1}:
        what = "no records" if not part else f"only {'reals' if labels == {0} else 'fakes'}"
        families = ",".join(config.families)
        raise InputError(f"{source}: split '{split}' has {what} for families {families}{hint}")


def _probe_batches(dataset: ImageDataset, seed: int, loader_args: dict):
    """Deterministic (pixels, labels) batches of training data for methods that score layers first."""
    loader = DataLoader(dataset, sampler=EpochShuffle(len(dataset), seed + 1), **loader_args)
    for batch in loader:
        pixels, labels, _, _ = drop_skipped(batch)
        if len(labels):
            yield pixels, labels


def _optimizer(params, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (weight decay as an L2 term in the gradient, Effort's recipe)."""
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, weight_decay=config.weight_decay)


def _scheduler(optimizer, schedule: str, total_steps: int):
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1))))


def _train_epoch(model, loader, optimizer, scheduler, prepared, steps, accum, accelerator, dataset, emit, note,
                 epoch, position):
    """One epoch of `steps` batches; every `accum` batches (and the epoch's last) make one optimizer step,
    each batch's loss divided by its group's size so a step follows the mean over the group's batches."""
    model.train()
    total = torch.zeros(2)
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        group_start = step - step % accum
        group_size = min(accum, steps - group_start)
        last_of_group = step == group_start + group_size - 1
        pixels, labels, _, bad = drop_skipped(batch)
        _note_skipped(accelerator, dataset, bad, note)
        # DDP all-reduces gradients only on a group's last backward.
        with contextlib.nullcontext() if last_of_group else accelerator.no_sync(model):
            # A batch of only unreadable images gets a zero loss, which keeps DDP processes in step. The loss is
            # float32 whatever the autocast dtype of the forward.
            ce = (F.cross_entropy(model(pixels).float(), labels) if len(labels)
                  else model(batch[0][:1]).float().sum() * 0)
            loss = ce if prepared.aux_loss is None else ce + prepared.aux_loss()
            accelerator.backward(loss / group_size)
        if last_of_group:
            if prepared.before_step is not None:
                prepared.before_step()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        total += torch.tensor([ce.item() * len(labels), len(labels)])
        position["done"] = epoch * steps + step + 1
        emit("train", position["done"], position["total"], epoch=epoch + 1, loss=ce.item())
    total = accelerator.reduce(total.to(accelerator.device), "sum").cpu()
    return (total[0] / total[1]).item() if total[1] > 0 else float("nan")


@torch.no_grad()
def _evaluate(model, loader, accelerator, dataset, note) -> dict:
    """Validation AUC / ACC (threshold 0.5) / loss over all processes' predictions."""
    model.eval()
    logits_all, labels_all = [], []
    for pixels, labels, indices in loader:
        logits, labels, indices = accelerator.gather_for_metrics((model(pixels), labels, indices))
        good = labels >= 0
        _note_skipped(accelerator, dataset, indices[~good], note, gathered=True)
        logits_all.append(logits[good].float().cpu())
        labels_all.append(labels[good].cpu())
    logits, labels = torch.cat(logits_all), torch.cat(labels_all)
    y, probs = labels.numpy(), logits.softmax(-1)[:, 1].numpy()
    return {"auc": metrics.auc(y, probs), "acc": metrics.accuracy(y, probs),
            "loss": float(F.cross_entropy(logits, labels))}


def _note_skipped(accelerator, dataset, bad, note, gathered: bool = False) -> None:
    """Report unreadable images once each (training batches are sharded, so gather their indices)."""
    if not gathered and accelerator.num_processes > 1:
        counts = accelerator.gather(torch.tensor([len(bad)], device=accelerator.device))
        if int(counts.sum()) == 0:
            return
        bad = _gather_varlen(accelerator, bad)
    for message in dataset.note_skipped(bad.tolist()):
        note(f"skipped: {message}", skipped=message)


def _gather_varlen(accelerator, values: torch.Tensor) -> torch.Tensor:
    padded = accelerator.pad_across_processes(values.to(accelerator.device), pad_index=-1)
    gathered = accelerator.gather(padded).cpu()
    return gathered[gathered >= 0]


def _summary(record: dict, epochs: int) -> str:
    val = " ".join(f"{k[4:]} {record[k]:.4f}" for k in ("val_auc", "val_acc", "val_loss") if k in record)
    return (f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f}  "
            f"{'val ' + val if val else 'no validation'}  best {record['selected']}")


def _better(val: dict, best: dict, metric: str) -> bool:
    if not best:
        return bool(val)
    if metric == "loss":
        return val["loss"] < best["loss"]
    return val[metric] > best[metric]


def _trainable_state(detector: Detector, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(detector.named_parameters())
    return {n: params[n].detach().clone().cpu() for n in names}


@torch.no_grad()
def _load_trainable(detector: Detector, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(detector.named_parameters())
    for name, value in tensors.items():
        params[name].copy_(value)


def _write_log(out: Path, history: list[dict]) -> None:
    write_text(out.with_suffix(".log.jsonl"), "".join(json.dumps(r) + "\n" for r in history))


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))

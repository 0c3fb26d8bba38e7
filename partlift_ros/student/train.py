"""Distil the pseudo-labels of ``partlift label`` runs into the LiDAR-only SPVCNN student.

One training step reads top to bottom (``training_step``)::

    loss = CE_w + α·Lovász            on the 3D logits (pseudo-labels, ignore honoured, point weights)
         + CE_w + α·Lovász            on the fused logits of visible points    (2D branch on)
         + γ·KL(fused ‖ 3D)           on visible points                        (2D branch on)

with class weights from the pseudo-label counts and point weights = confidence × unit score.

Backward distillation (``rounds`` > 1): after each round the student labels every training frame, each
pseudo-label unit (superpoint) is re-scored by the share of its points where the student agrees with the
pseudo-label, and the next round continues from the current weights (fresh optimiser and schedule) with
those scores multiplying the point weights, so units the student cannot reproduce count less.

Repeatability: every random choice is drawn from generators seeded by (seed, round, epoch[, sample]), and
the checkpoint written after each epoch holds the model, optimiser, schedule, AMP scaler, unit scores and
RNG states, so ``resume=True`` takes exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..config import atomic_write_text
from ..types import InputError
from .checkpoint import save_checkpoint, student_state
from .data import AugmentConfig, PseudoLabelDataset, collate, to_device, train_transform

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
FINAL = "student.pt"
METRICS = "metrics.jsonl"
# Keys that change the network or what it learns from: a resumed run must keep them.
_ARCHITECTURE_KEYS = ("width", "voxel_size", "use_2d", "image_channels", "backend", "seed")


@dataclass
class TrainConfig:
    epochs: int = 20  # per round
    rounds: int = 1  # > 1: backward distillation between rounds
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    min_lr_ratio: float = 0.01  # cosine schedule ends at lr × this
    voxel_size: float = 0.05  # metres
    width: int = 32  # SPVCNN base channel count
    alpha: float = 2.0  # Lovász weight
    gamma: float = 0.05  # KL weight of the 2D branch
    confidence_weighting: bool = True  # point weights = confidence × unit score (off: all 1)
    class_weighting: bool = True  # CE class weights from the pseudo-label counts
    use_2d: bool = True  # training-only 2D branch (needs camera images in the source)
    image_channels: int = 64
    augment: bool = True
    keep_ratio: float = 0.7  # random downsampling keeps this share of each scan
    max_points: int = 0  # sphere-crop each scan to this many voxels (0 = whole scans; bounds memory and time)
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # mixed precision (CUDA only)
    backend: str = "auto"  # sparse conv backend: auto | torch | spconv
    grad_clip: float = 10.0  # max gradient norm; 0 = off
    recompute: bool = True  # recompute U-Net stage activations in backward: less memory, same gradients
    eval_every: int = 1  # epochs between ground-truth evaluations (when a GT sequence is given)
    eval_max_frames: int = 0  # 0 = every frame of the GT sequence

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.rounds >= 1, "rounds must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.voxel_size > 0, "voxel_size must be > 0"),
            (self.width >= 4, "width must be >= 4"),
            (0 < self.keep_ratio <= 1, "keep_ratio must be in (0, 1]"),
            (self.alpha >= 0 and self.gamma >= 0, "alpha and gamma must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"train config: {message}")


# ----------------------------------------------------------------------------------------- losses
def training_step(model, fusion, batch: dict, class_weights: torch.Tensor, cfg: TrainConfig) -> dict:
    """Forward pass and the loss terms; ``loss`` is what to back-propagate."""
    from .fusion2d import text_classifier
    from .losses import kl_on_visible, pseudo_label_loss

    labels = batch["segment"]
    weights = batch["weight"] if cfg.confidence_weighting else None
    out = model(batch, embeddings=False)  # the (N, 512) embeddings would only cost memory here
    loss_3d = pseudo_label_loss(out["logits"], labels, class_weights, weights, alpha=cfg.alpha)
    terms = {"loss_3d": loss_3d}
    loss = loss_3d
    if fusion is not None and "image" in batch:
        fused = fusion(batch, out["point_features"], text_classifier(model), out["logits"])
        visible = batch["visible"].bool() & (batch["pixel"][:, 0] >= 0)
        if bool(visible.any()):
            loss_fused = pseudo_label_loss(
                fused[visible], labels[visible], class_weights, None if weights is None else weights[visible],
                alpha=cfg.alpha,
            )
            loss_kl = kl_on_visible(out["logits"], fused, visible)
            loss = loss + loss_fused + cfg.gamma * loss_kl
            terms.update(loss_fused=loss_fused, loss_kl=loss_kl)
    terms["loss"] = loss
    return terms


# ----------------------------------------------------------------------------------------- backward distillation
def unit_agreement(pred: np.ndarray, segment: np.ndarray, unit: np.ndarray, num_units: int | None = None) -> np.ndarray:
    """(M,) share of each unit's pseudo-labelled points where ``pred`` equals the pseudo-label.

    Points without a unit or without a pseudo-label do not count; a unit with no such point scores 1
    (it carries no weight either way).
    """
    pred, segment, unit = (np.asarray(a, np.int64) for a in (pred, segment, unit))
    if not (pred.shape == segment.shape == unit.shape):
        raise InputError(f"unit_agreement: shapes {pred.shape}, {segment.shape}, {unit.shape} differ")
    m = int(num_units if num_units is not None else (unit.max() + 1 if unit.size else 0))
    counted = (unit >= 0) & (segment >= 0)
    total = np.bincount(unit[counted], minlength=m)[:m]
    agree = np.bincount(unit[counted & (pred == segment)], minlength=m)[:m]
    return np.where(total > 0, agree / np.maximum(total, 1), 1.0).astype(np.float32)


def rescore_units(model, dataset: PseudoLabelDataset, voxel_size: float) -> float:
    """Set every frame's unit scores from the student's agreement; returns the point-level agreement."""
    from .infer import predict

    agree = total = 0
    for i in range(len(dataset)):
        dataset.set_unit_scores(i, None)
        sample = dataset.raw_sample(i)
        points = np.concatenate([sample["coord"], sample["strength"]], axis=1)
        pred, _ = predict(model, points, voxel_size)
        dataset.set_unit_scores(i, unit_agreement(pred, sample["segment"], sample["unit"]))
        labelled = sample["segment"] >= 0
        agree += int((pred[labelled] == sample["segment"][labelled]).sum())
        total += int(labelled.sum())
    return agree / max(total, 1)


# ----------------------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------- the loop
class _Trainer:
    """The state of one training run; ``run`` is the loop, the rest keeps it short."""

    def __init__(self, run_dirs, out_dir: Path, cfg: TrainConfig, gt_sequence, progress, sources) -> None:
        from .checkpoint import build_model
        from .fusion2d import Fusion2D
        from .losses import class_weights_from_counts

        self.cfg, self.out_dir, self.gt_sequence = cfg, out_dir, gt_sequence
        self.progress = progress or (lambda event: None)
        self.device = torch.device(cfg.device)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.dataset = PseudoLabelDataset(run_dirs, sources=sources, load_images=cfg.use_2d)
        self.class_names = self.dataset.class_names
        _seed_everything(cfg.seed)
        self.model_args = {"in_channels": 4, "width": cfg.width, "voxel_size": cfg.voxel_size, "backend": cfg.backend}
        self.model = build_model(self.model_args, self.dataset.text_embeddings).to(self.device)
        self.model.recompute = cfg.recompute  # memory only: not an architecture key
        self.fusion = (
            Fusion2D(self.model.feature_dim, cfg.image_channels).to(self.device) if cfg.use_2d else None
        )
        counts = self.dataset.class_counts()
        if counts.sum() == 0:
            raise InputError(f"the label runs {[str(d) for d in run_dirs]} hold no labelled point")
        self.class_counts = counts
        self.class_weights = (
            class_weights_from_counts(torch.as_tensor(counts)) if cfg.class_weighting
            else torch.ones(len(counts))
        ).float().to(self.device)
        aug = AugmentConfig(keep_ratio=cfg.keep_ratio) if cfg.augment else None
        self.transform = train_transform(cfg.voxel_size, aug, cfg.max_points)
        self.steps_per_epoch = math.ceil(len(self.dataset) / cfg.batch_size)
        self.new_optimiser()

    def parameters(self) -> list:
        params = list(self.model.parameters())
        if self.fusion is not None:
            params += list(self.fusion.parameters())
        return params

    def new_optimiser(self) -> None:
        cfg = self.cfg
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = cfg.epochs * self.steps_per_epoch

        def cosine(step: int) -> float:
            t = min(step / max(total, 1), 1.0)
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    # ------------------------------------------------------------------ state
    def state(self, round_: int, epoch: int, global_step: int) -> dict:
        return {
            **student_state(self.model, self.model_args, self.class_names, self.dataset.text_embeddings, self.cfg,
                            quantise=False),
            "fusion": None if self.fusion is None else self.fusion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "round": round_,
            "epoch": epoch,
            "global_step": global_step,
            "rng": _rng_state(),
            "unit_scores": list(self.dataset.unit_scores),
            "class_counts": self.class_counts,
            "run_dirs": [str(d) for d in self.dataset.run_dirs],
        }

    def load(self, ckpt: dict) -> tuple[int, int, int]:
        """Restore a checkpoint; returns (round, epoch, global_step) of the epoch it closed."""
        old = ckpt["config"]
        changed = [k for k in _ARCHITECTURE_KEYS if old.get(k) != getattr(self.cfg, k)]
        if changed:
            raise InputError(
                "cannot resume: " + ", ".join(f"{k} was {old.get(k)!r}, now {getattr(self.cfg, k)!r}" for k in changed)
            )
        if list(ckpt["class_names"]) != self.class_names:
            raise InputError(f"cannot resume: checkpoint classes {ckpt['class_names']} differ from {self.class_names}")
        self.model.load_state_dict(ckpt["model"])
        if self.fusion is not None and ckpt["fusion"] is not None:
            self.fusion.load_state_dict(ckpt["fusion"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if len(ckpt["unit_scores"]) == len(self.dataset):
            for i, scores in enumerate(ckpt["unit_scores"]):
                self.dataset.set_unit_scores(i, scores)
        _set_rng_state(ckpt["rng"])
        return int(ckpt["round"]), int(ckpt["epoch"]), int(ckpt["global_step"])

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, round_: int, epoch: int, global_step: int) -> tuple[dict, int]:
        cfg = self.cfg
        self.model.train()
        if self.fusion is not None:
            self.fusion.train()
        order = np.random.default_rng([cfg.seed, round_, epoch]).permutation(len(self.dataset))
        sums: dict[str, float] = {}
        for step in range(self.steps_per_epoch):
            ids = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            samples = [
                self.transform(self.dataset[int(i)], np.random.default_rng([cfg.seed, round_, epoch, int(i)]))
                for i in ids
            ]
            batch = to_device(collate(samples), self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, enabled=self.amp):
                terms = training_step(self.model, self.fusion, batch, self.class_weights, cfg)
            self.scaler.scale(terms["loss"]).backward()
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            global_step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            self.progress({"kind": "step", "round": round_, "epoch": epoch, "step": step + 1,
                           "steps": self.steps_per_epoch, "loss": float(terms["loss"].detach())})
        return {k: v / self.steps_per_epoch for k, v in sums.items()}, global_step

    def evaluate(self) -> dict:
        from .infer import evaluate_on_sequence

        result = evaluate_on_sequence(self.model, self.class_names, self.gt_sequence, self.cfg.voxel_size,
                                      max_frames=self.cfg.eval_max_frames)
        return {"miou": result["miou"], "accuracy": result["accuracy"], "iou": result["iou"]}


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def train(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    cfg: TrainConfig | None = None,
    gt_sequence: str | Path | None = None,
    progress: Callable[[dict], None] | None = None,
    resume: bool = False,
    sources: Sequence[str | Path] | None = None,
) -> dict:
    """Train a student on the pseudo-labels in ``run_dirs``; checkpoints and metrics go to ``out_dir``.

    ``progress`` receives event dicts (``kind`` = "step" | "epoch" | "rescore"). Returns a summary dict.
    ``out_dir`` must not hold a previous run unless ``resume`` is set.
    """
    cfg = cfg or TrainConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    last = out_dir / CHECKPOINT_DIR / LAST
    if last.is_file() and not resume:
        raise InputError(f"{out_dir} already holds a training run ({last}); resume it or choose another folder")
    t_start = time.perf_counter()
    trainer = _Trainer(run_dirs, out_dir, cfg, gt_sequence, progress, sources)
    start_round, start_epoch, global_step = 0, 0, 0
    resumed_from = None
    if resume and last.is_file():
        from .checkpoint import read_checkpoint

        r, e, global_step = trainer.load(read_checkpoint(last, trainer.device))
        resumed_from = {"round": r, "epoch": e}
        start_round, start_epoch = (r, e + 1) if e + 1 < cfg.epochs else (r + 1, 0)
    metrics_path = out_dir / METRICS
    rows = [row for row in _read_metrics(metrics_path)
            if resumed_from is not None and (row["round"], row["epoch"]) <= (resumed_from["round"], resumed_from["epoch"])]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "train_config.json", json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    agreements: list[float] = []
    epochs_run = 0
    for round_ in range(start_round, cfg.rounds):
        if round_ > 0 and start_epoch == 0:
            agreement = rescore_units(trainer.model, trainer.dataset, cfg.voxel_size)
            agreements.append(agreement)
            trainer.new_optimiser()
            trainer.progress({"kind": "rescore", "round": round_, "agreement": agreement})
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            losses, global_step = trainer.train_epoch(round_, epoch, global_step)
            row = {"round": round_, "epoch": epoch, "step": global_step, "lr": trainer.scheduler.get_last_lr()[0],
                   "seconds": time.perf_counter() - t0, **losses}
            if gt_sequence is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                row.update(trainer.evaluate())
            rows.append(row)
            epochs_run += 1
            save_checkpoint(last, trainer.state(round_, epoch, global_step))
            _write_metrics(metrics_path, rows)
            trainer.progress({"kind": "epoch", **row})
        start_epoch = 0
    final = out_dir / FINAL  # weights and what inference needs only (checkpoint.py); last.pt keeps the rest
    trainer.model.eval()
    save_checkpoint(final, student_state(trainer.model, trainer.model_args, trainer.class_names,
                                         trainer.dataset.text_embeddings, cfg))
    evaluated = [r["miou"] for r in rows if r.get("miou") is not None]
    return {
        "out_dir": str(out_dir),
        "checkpoint": str(final),
        "metrics": str(metrics_path),
        "frames": len(trainer.dataset),
        "classes": len(trainer.class_names),
        "epochs_run": epochs_run,
        "final_loss": rows[-1]["loss"] if rows else float("nan"),
        "first_loss": rows[0]["loss"] if rows else float("nan"),
        "final_miou": evaluated[-1] if evaluated else None,
        "best_miou": max(evaluated) if evaluated else None,
        "unit_agreement_per_round": agreements,
        "resumed_from": resumed_from,
        "seconds": time.perf_counter() - t_start,
    }

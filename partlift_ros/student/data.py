"""Training samples for the student: dicts of arrays, pure transforms, offset batching (Pointcept style).

A sample holds, per point (length N):

- ``coord``    (N, 3) float32  x, y, z in the LiDAR frame (metres), augmented in training;
- ``strength`` (N, 1) float32  the LiDAR intensity (remission), untouched by augmentation;
- ``feat``     (N, 4) float32  the network input, built last by :func:`add_features`:
                               the *augmented* x, y, z and the intensity;
- ``segment``  (N,)   int64    pseudo-label class id (0-based into the run's class list), -1 = ignore;
- ``weight``   (N,)   float32  confidence × unit score (the unit's agreement in backward distillation);
- ``visible``  (N,)   bool     seen by the camera and not occluded (the 2D branch only uses these);
- ``pixel``    (N, 2) int32    (column, row) in ``image``; -1 where the point is not in the image;
- ``unit``     (N,)   int64    superpoint id from the label run, -1 = none;
- ``point_index`` (N,) int64   row of the point in the original scan (survives downsampling).

and per sample: ``image`` (H, W, 3) uint8 RGB (only when the 2D branch is used), ``name`` (str).

Transforms are pure: they take a sample and return a new dict; random ones take a ``numpy.random.Generator``
so that a run is repeatable from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..io.writers import read_run_classes, read_run_frame, read_run_labels
from ..points import finite_points_mask
from ..types import IGNORE, InputError

# Keys whose first axis runs over points; every subsetting transform keeps them aligned.
PER_POINT_KEYS = (
    "coord", "strength", "feat", "segment", "weight", "visible", "pixel", "unit", "point_index", "grid_coord",
)

Sample = dict


def make_sample(
    points: np.ndarray,
    segment: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    visible: np.ndarray | None = None,
    pixel: np.ndarray | None = None,
    unit: np.ndarray | None = None,
    image: np.ndarray | None = None,
    name: str = "",
) -> Sample:
    """Build a sample from an (N, 4) scan and optional per-point annotations (defaults: unlabelled)."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 4:
        raise InputError(f"{name or 'sample'}: points must be (N, 4) x y z intensity, got {points.shape}")
    n = points.shape[0]
    sample: Sample = {
        "coord": np.ascontiguousarray(points[:, :3], dtype=np.float32),
        "strength": np.ascontiguousarray(points[:, 3:4], dtype=np.float32),
        "segment": np.full(n, IGNORE, np.int64) if segment is None else np.asarray(segment, np.int64),
        "weight": np.ones(n, np.float32) if weight is None else np.asarray(weight, np.float32),
        "visible": np.zeros(n, bool) if visible is None else np.asarray(visible, bool),
        "pixel": np.full((n, 2), -1, np.int32) if pixel is None else np.asarray(pixel, np.int32),
        "unit": np.full(n, IGNORE, np.int64) if unit is None else np.asarray(unit, np.int64),
        "point_index": np.arange(n, dtype=np.int64),
        "name": name,
    }
    for key in ("segment", "weight", "visible", "pixel", "unit"):
        if sample[key].shape[0] != n:
            raise InputError(f"{name or 'sample'}: {key} has {sample[key].shape[0]} rows for {n} points")
    if image is not None:
        sample["image"] = image
    return sample


def subset(sample: Sample, index: np.ndarray) -> Sample:
    """Keep the points selected by ``index`` (indices or a boolean mask) in every per-point array."""
    out = dict(sample)
    for key in PER_POINT_KEYS:
        if key in out:
            out[key] = out[key][index]
    return out


# ----------------------------------------------------------------------------------------- augmentation
@dataclass
class AugmentConfig:
    """Training augmentation; the defaults are the spec's ranges."""

    keep_ratio: float = 0.7  # random downsampling keeps this share of the points
    rotate: bool = True  # uniform rotation about z over the full circle
    scale_range: tuple[float, float] = (0.95, 1.05)  # one isotropic factor per sample
    translate: float = 0.5  # metres, uniform in [-t, t] on each of x, y, z


def random_downsample(sample: Sample, keep_ratio: float, rng: np.random.Generator) -> Sample:
    """Keep a random ``keep_ratio`` share of the points (at least one), in their original order."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    n = len(sample["coord"])
    k = max(1, int(round(n * keep_ratio)))
    if k >= n:
        return dict(sample)
    return subset(sample, np.sort(rng.choice(n, size=k, replace=False)))


def rotate_z(sample: Sample, angle: float) -> Sample:
    c, s = np.cos(angle), np.sin(angle)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    return {**sample, "coord": sample["coord"] @ R.T}


def augment(sample: Sample, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> Sample:
    """Downsample, rotate about z, scale and translate (the image and ``pixel`` stay as captured)."""
    sample = random_downsample(sample, cfg.keep_ratio, rng)
    if cfg.rotate:
        sample = rotate_z(sample, rng.uniform(0.0, 2.0 * np.pi))
    low, high = cfg.scale_range
    coord = sample["coord"] * np.float32(rng.uniform(low, high))
    coord = coord + rng.uniform(-cfg.translate, cfg.translate, size=3).astype(np.float32)
    return {**sample, "coord": coord.astype(np.float32)}


# ----------------------------------------------------------------------------------------- voxelisation
def grid_sample(
    sample: Sample, voxel_size: float, keep: str = "first", rng: np.random.Generator | None = None
) -> Sample:
    """Voxelise: integer ``grid_coord`` per point, one point per voxel, and the ``inverse`` map back.

    ``keep`` chooses the point that represents a voxel: ``"random"`` (training; needs ``rng``),
    ``"first"`` (the lowest index, deterministic) or ``"all"`` (no reduction, every point keeps its own row).
    The result's per-point arrays hold the kept points; ``inverse`` (length of the input) gives, for every
    input point, the row of the kept point in its voxel, so ``result_array[inverse]`` spreads a per-voxel
    prediction back over the input scan. ``grid_coord`` starts at 0 on each axis.
    """
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
    coord = sample["coord"]
    if len(coord) == 0:
        raise InputError(f"{sample.get('name') or 'sample'}: cannot voxelise an empty scan")
    cells = np.floor(coord / voxel_size).astype(np.int64)
    cells -= cells.min(axis=0)
    if keep == "all":
        out = {**sample, "grid_coord": cells.astype(np.int32)}
        out["inverse"] = np.arange(len(coord), dtype=np.int64)
        return out
    extent = cells.max(axis=0) + 1
    key = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]
    if keep == "random":
        if rng is None:
            raise ValueError("grid_sample(keep='random') needs an rng")
        order = np.lexsort((rng.random(len(key)), key))
    elif keep == "first":
        order = np.argsort(key, kind="stable")
    else:
        raise ValueError(f"keep must be 'random', 'first' or 'all', got {keep!r}")
    sorted_key = key[order]
    starts = np.ones(len(key), dtype=bool)
    starts[1:] = sorted_key[1:] != sorted_key[:-1]
    voxel_of_sorted = np.cumsum(starts) - 1
    inverse = np.empty(len(key), dtype=np.int64)
    inverse[order] = voxel_of_sorted
    out = subset({**sample, "grid_coord": cells.astype(np.int32)}, order[starts])
    out["inverse"] = inverse
    return out


def sphere_crop(sample: Sample, max_points: int, rng: np.random.Generator) -> Sample:
    """Keep the ``max_points`` points nearest to a random point of the scan (Pointcept's SphereCrop).

    Unlike random thinning, a crop leaves the point density, and so what the sparse convolutions see, as at
    inference time.
    """
    coord = sample["coord"]
    if len(coord) <= max_points:
        return sample
    centre = coord[rng.integers(len(coord))]
    dist2 = ((coord - centre) ** 2).sum(axis=1)
    return subset(sample, np.sort(np.argpartition(dist2, max_points - 1)[:max_points]))


def add_features(sample: Sample) -> Sample:
    """``feat`` = (x, y, z, intensity) from the current (augmented) coordinates."""
    return {**sample, "feat": np.concatenate([sample["coord"], sample["strength"]], axis=1).astype(np.float32)}


def train_transform(voxel_size: float, augment_cfg: AugmentConfig | None = AugmentConfig(),
                    max_points: int = 0) -> Callable:
    """augment → grid_sample(random point per voxel) → sphere crop to ``max_points`` voxels (0 = all) → features.

    ``augment_cfg=None`` skips augmentation.
    """

    def apply(sample: Sample, rng: np.random.Generator) -> Sample:
        if augment_cfg is not None:
            sample = augment(sample, rng, augment_cfg)
        sample = grid_sample(sample, voxel_size, keep="random", rng=rng)
        sample.pop("inverse")  # training scores the kept points only; the map back is not needed
        if max_points > 0:
            sample = sphere_crop(sample, max_points, rng)
        return add_features(sample)

    return apply


def eval_transform(voxel_size: float, keep: str = "first") -> Callable:
    def apply(sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        return add_features(grid_sample(sample, voxel_size, keep=keep))

    return apply


# ----------------------------------------------------------------------------------------- batching
def collate(samples: Sequence[Sample]) -> dict:
    """Concatenate samples into one batch of torch tensors with ``offset`` (cumulative point counts).

    ``offset[b]`` is the end row of sample b, as in Pointcept. ``inverse`` is shifted so it indexes the batch
    rows, and ``inverse_offset`` gives the input-scan boundaries. Images (if every sample has one) are
    zero-padded to the largest size into ``image`` (B, 3, H, W) float in [0, 1], with ``image_size`` (B, 2)
    = (width, height); ``pixel`` still indexes each sample's own image.
    """
    import torch

    if not samples:
        raise ValueError("collate needs at least one sample")
    counts = np.array([len(s["coord"]) for s in samples], dtype=np.int64)
    batch: dict = {"offset": torch.from_numpy(np.cumsum(counts))}
    for key in PER_POINT_KEYS:
        if all(key in s for s in samples):
            batch[key] = torch.from_numpy(np.concatenate([s[key] for s in samples], axis=0))
    if all("inverse" in s for s in samples):
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        batch["inverse"] = torch.from_numpy(np.concatenate([s["inverse"] + b for s, b in zip(samples, starts)]))
        batch["inverse_offset"] = torch.from_numpy(np.cumsum([len(s["inverse"]) for s in samples]))
    if all("image" in s for s in samples):
        batch["image"], batch["image_size"] = _stack_images([s["image"] for s in samples])
    batch["name"] = [s.get("name", "") for s in samples]
    return batch


def _stack_images(images: Sequence[np.ndarray]):
    import torch

    height = max(im.shape[0] for im in images)
    width = max(im.shape[1] for im in images)
    stacked = np.zeros((len(images), height, width, 3), np.uint8)
    for b, im in enumerate(images):
        stacked[b, : im.shape[0], : im.shape[1]] = im
    tensor = torch.from_numpy(stacked).permute(0, 3, 1, 2).float().div_(255.0)
    sizes = torch.tensor([[im.shape[1], im.shape[0]] for im in images], dtype=torch.int64)
    return tensor.contiguous(), sizes


def batch_index(offset, device=None):
    """(N,) sample index of every row of a batch, from its ``offset``."""
    import torch

    device = device or offset.device
    counts = torch.diff(offset, prepend=offset.new_zeros(1)).to(device)
    return torch.repeat_interleave(torch.arange(len(offset), device=device), counts)


def to_device(batch: dict, device) -> dict:
    """Move every tensor of a batch to ``device`` (lists such as ``name`` stay)."""
    import torch

    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------- label runs
class PseudoLabelDataset:
    """The frames of one or more ``partlift label`` output folders as training samples.

    Each run folder must hold ``labels/NNNNNN.label``, ``frames/NNNNNN.npz`` (``confidence``, ``visible``),
    ``classes.yaml``, ``text_embeddings.npy`` and ``source.yaml`` (where the points come from); all runs
    must share one class list. ``sources`` (one path per run, optional) overrides the source folder recorded
    in ``source.yaml``, e.g. when the data moved. Memory does not grow with the number of frames: a sample
    is read from disk when it is asked for (``cache=True`` keeps every raw sample in memory, for a few
    frames read many times). A rosbag source can only be read as a stream, so the first access to a bag
    run reads it once and spills each wanted frame's points, pixels (and image) to a temporary folder
    that lives as long as the dataset; later reads load one frame from there.

    ``unit_scores[i]`` (per sample, indexed by superpoint id) scale the point weights: backward distillation
    sets them; they start at 1.
    """

    def __init__(self, run_dirs: Sequence[str | Path], sources: Sequence[str | Path] | None = None,
                 load_images: bool = False, cache: bool = False) -> None:
        from ..label_job import SourceSpec

        if not run_dirs:
            raise InputError("no label run folders given")
        if sources is not None and len(sources) != len(run_dirs):
            raise InputError(f"{len(sources)} sources given for {len(run_dirs)} label runs")
        self.run_dirs = [Path(d) for d in run_dirs]
        self.load_images = load_images
        self.cache = cache
        self.class_names: list[str] = []
        self.text_embeddings = np.zeros((0, 0), np.float32)
        self.items: list[tuple[int, int]] = []  # (run number, frame index)
        self._specs: list[SourceSpec] = []
        self._readers: dict[int, Callable] = {}
        self._raw: dict[int, Sample] = {}
        self._spill = None  # tempfile.TemporaryDirectory for bag frames, made on first use
        for r, run in enumerate(self.run_dirs):
            names, embeddings = _read_run_vocabulary(run)
            if not self.class_names:
                self.class_names, self.text_embeddings = names, embeddings
            elif names != self.class_names:
                raise InputError(f"{run}: class list {names} differs from {self.run_dirs[0]}'s {self.class_names}")
            self._specs.append(_read_source_spec(run, None if sources is None else sources[r]))
            self.items += [(r, index) for index in _run_frame_indices(run)]
        if not self.items:
            raise InputError(f"no labelled frames in {[str(d) for d in self.run_dirs]}")
        self.unit_scores: list[np.ndarray | None] = [None] * len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def name(self, i: int) -> str:
        r, index = self.items[i]
        return f"{self.run_dirs[r].name}/{index:06d}"

    def raw_sample(self, i: int) -> Sample:
        """The untransformed sample (pseudo-labels, confidence as weight, unit scores applied)."""
        sample = self._raw.get(i)
        if sample is None:
            sample = self._read(i)
            if self.cache:
                self._raw[i] = sample
        scores = self.unit_scores[i]
        if scores is None:
            return sample
        unit = sample["unit"]
        factor = np.where(unit >= 0, scores[np.clip(unit, 0, len(scores) - 1)] if len(scores) else 1.0, 1.0)
        return {**sample, "weight": (sample["weight"] * factor).astype(np.float32)}

    def __getitem__(self, i: int) -> Sample:
        return self.raw_sample(i)

    def class_counts(self) -> np.ndarray:
        """(C,) pseudo-labelled points per class over the whole dataset (for class weights)."""
        counts = np.zeros(self.num_classes, np.int64)
        for r, index in self.items:
            segment, _ = read_run_labels(self.run_dirs[r], index)
            counts += np.bincount(segment[segment >= 0], minlength=self.num_classes)[: self.num_classes]
        return counts

    def set_unit_scores(self, i: int, scores: np.ndarray | None) -> None:
        self.unit_scores[i] = None if scores is None else np.asarray(scores, np.float32)

    def _reader(self, r: int) -> Callable[[int], dict]:
        """frame number -> the scan arrays of run ``r``'s source (``_scan_arrays``)."""
        if r not in self._readers:
            from ..label_job import open_source

            spec = self._specs[r]
            if spec.kind == "kitti":
                read_frame = open_source(spec)[1]
                self._readers[r] = lambda index: self._scan_arrays(read_frame(index))
            else:
                self._readers[r] = self._spill_bag(r)
        return self._readers[r]

    def _spill_bag(self, r: int) -> Callable[[int], dict]:
        """Read run ``r``'s bag once, write each wanted frame's arrays to the spill folder; a reader of them."""
        import tempfile

        from ..label_job import iter_source

        if self._spill is None:
            self._spill = tempfile.TemporaryDirectory(prefix="partlift-student-")
        folder = Path(self._spill.name) / f"run{r}"
        folder.mkdir()
        wanted = {index for rr, index in self.items if rr == r}
        for index, frame in iter_source(self._specs[r], None, lambda i: i not in wanted):
            if not isinstance(frame, Exception):  # frames that fail to read are left out
                np.savez(folder / f"{index:06d}.npz", **self._scan_arrays(frame))

        def read(index: int) -> dict:
            path = folder / f"{index:06d}.npz"
            if not path.is_file():
                raise KeyError(index)
            with np.load(path) as data:
                return {k: data[k] for k in data.files}

        return read

    def _scan_arrays(self, frame) -> dict:
        """What a sample needs from a frame: points (N, 4), pixel (N, 2) in the first camera, image if used."""
        from ..calibration import project_points

        points = np.asarray(frame.points, np.float32)
        pixel = np.full((points.shape[0], 2), -1, np.int32)
        out = {"points": points, "pixel": pixel}
        if frame.cameras:
            cam = frame.camera
            proj = project_points(points, cam.K, cam.T_cam_lidar, cam.size, cam.D)
            pixel[proj.in_image] = proj.pixels[proj.in_image]
            if self.load_images:
                out["image"] = cam.image
        return out

    def _read(self, i: int) -> Sample:
        r, index = self.items[i]
        run = self.run_dirs[r]
        try:
            scan = self._reader(r)(index)
        except KeyError as exc:
            raise InputError(f"{run}: frame {index} is not in the source {self._specs[r].path}") from exc
        points, pixel = scan["points"], scan["pixel"]
        n = points.shape[0]
        segment, unit = read_run_labels(run, index)
        confidence, visible = _read_frame_arrays(run, index, n)
        if segment.shape[0] != n:
            raise InputError(f"{run}: frame {index} has {segment.shape[0]} labels for a scan of {n} points")
        visible = visible & (pixel[:, 0] >= 0)
        sample = make_sample(points, segment=segment, weight=np.where(segment >= 0, confidence, 0.0),
                             visible=visible, pixel=pixel, unit=unit, image=scan.get("image"), name=self.name(i))
        # Non-finite returns keep their index in a run (unlabelled); the network never sees them.
        finite = finite_points_mask(points)
        return sample if finite.all() else subset(sample, finite)


def _read_run_vocabulary(run: Path) -> tuple[list[str], np.ndarray]:
    names = read_run_classes(run)
    emb_file = run / "text_embeddings.npy"
    if not emb_file.is_file():
        raise InputError(f"{run}: missing text_embeddings.npy (the class embeddings the student classifies with)")
    embeddings = np.load(emb_file).astype(np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(names):
        raise InputError(f"{emb_file}: shape {embeddings.shape} does not match {len(names)} classes")
    return names, embeddings


def _read_source_spec(run: Path, override: str | Path | None):
    from ..label_job import detect_source, read_source_spec

    if override is not None:
        return detect_source(override)
    spec = read_source_spec(run)
    if spec is None:
        raise InputError(f"{run}: missing source.yaml (which sequence or bag the points come from)")
    return spec


def _run_frame_indices(run: Path) -> list[int]:
    labels = run / "labels"
    if not labels.is_dir():
        raise InputError(f"{run}: no labels/ folder")
    return sorted(int(p.stem) for p in labels.glob("*.label") if p.stem.isdigit())


def _read_frame_arrays(run: Path, index: int, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    data = read_run_frame(run, index)
    missing = [k for k in ("confidence", "visible") if k not in data]
    if missing:
        raise InputError(f"{run}: frames/{index:06d}.npz lacks {missing} (has {sorted(data)})")
    confidence = data["confidence"].astype(np.float32)
    visible = data["visible"].astype(bool)
    if confidence.shape[0] != n_points or visible.shape[0] != n_points:
        raise InputError(f"{run}: frames/{index:06d}.npz has arrays of length {confidence.shape[0]} "
                         f"for a scan of {n_points} points")
    return confidence, visible

"""LabelPipeline: the one per-frame entry that the CLI, the ROS nodes and the tests drive.

    frame ──► projection ──► superpixels ──► superpoints ──► visibility ──► CLIP crops ──► affinity ──► per-point labels

The ``superpixels`` stage also computes the graph image regions that cut the ground into superpoints
(``image_regions.segment_image``). With ``sam.enabled``, box-prompted SAM masks grey each crop's background
before CLIP and leave the points that project outside their instance's mask unlabelled (stage ``sam`` in
``timings_ms``).

``process(frame)`` returns the frames whose labels are final: in online mode always the frame just given;
in offline mode (the paper's block queue) frames come out in blocks once enough instances are queued, and
``flush()`` returns the rest at the end of a sequence.

CLIP encodes the crops of one *CLIP group* together, in ``clip.batch_size`` batches: the frames of one offline
affinity block (known from the crop counts, before CLIP runs), else one frame. CLIP's float results depend on
how crops are batched, so this one rule gives the same bytes whether ``process`` runs the stages in one call or
a labelling job runs them apart (``prepare`` in one process, ``clip_scores`` in another, then ``label_group``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .calibration import Projection, project_points
from .clip_groups import ClipGroups, PreparedFrame
from .config import PipelineConfig
from .helper_threads import helper_threads
from .points import finite_points_mask
from .types import IGNORE, Frame, LabelledCloud


@dataclass
class _Analysed:
    """A frame after the per-frame stages, waiting for its affinity-refined scores."""

    frame: Frame
    instance: np.ndarray  # (N,) superpoint ids
    visible: np.ndarray  # (N,) bool, visible in at least one camera
    num_instances: int
    valid: np.ndarray  # (M,) bool: had a crop and was scored
    boxes: np.ndarray  # (M, 4) in the camera the crop came from
    scores: np.ndarray  # (M_valid, C) CLIP softmax, zeros outside the candidate classes
    features: np.ndarray  # (M_valid, D)
    timings_ms: dict[str, float]
    keep: np.ndarray | None = None  # (N,) bool, False where SAM says the point lies outside its instance


@dataclass
class Geometry:
    """What the CLIP-free stages know about a frame (per camera lists follow ``frame.cameras``)."""

    projections: list[Projection]
    superpixels: list[np.ndarray]
    in_view: np.ndarray  # (N,) bool: projects into at least one image
    instance: np.ndarray  # (N,) superpoint ids, IGNORE where none
    num_instances: int
    visible_per_camera: list[np.ndarray]
    visible: np.ndarray  # (N,) bool: visible in at least one camera

    def expand(self, rows: np.ndarray) -> "Geometry":
        """This geometry of a frame's ``rows`` (bool mask), spread back over all its points: the others are
        not in any image, not visible and in no superpoint."""
        n = rows.shape[0]

        def spread(values: np.ndarray, fill) -> np.ndarray:
            out = np.full((n, *values.shape[1:]), fill, dtype=values.dtype)
            out[rows] = values
            return out

        projections = [Projection(spread(p.uv, np.nan), spread(p.depth, np.nan), spread(p.in_image, False))
                       for p in self.projections]
        return Geometry(
            projections, self.superpixels, spread(self.in_view, False), spread(self.instance, IGNORE),
            self.num_instances, [spread(v, False) for v in self.visible_per_camera], spread(self.visible, False),
        )


class _StageClock:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + (now - self._t) * 1e3
        self._t = now


class LabelPipeline:
    def __init__(self, cfg: PipelineConfig, labeler=None, sam=None) -> None:
        cfg.validate()
        self.cfg = cfg
        self._labeler = labeler
        self._sam = sam  # sam_refine.BoxMasker, used only when cfg.sam.enabled
        self._pending: OrderedDict[int, _Analysed] = OrderedDict()
        self._next_key = 0
        self._groups = ClipGroups(cfg.affinity)
        self._make_queue()

    # ----------------------------------------------------------------- configuration
    @property
    def labeler(self):
        """The CLIP labeller, loaded on first use so that construction stays cheap."""
        if self._labeler is None:
            from .clip_labeling import ClipLabeler

            self._labeler = ClipLabeler.load(self.cfg.clip)
        return self._labeler

    @property
    def sam(self):
        """The SAM box masker (``cfg.sam``), loaded on first use like the CLIP labeller."""
        if self._sam is None:
            from .sam_refine import BoxMasker

            self._sam = BoxMasker.load(self.cfg.sam, self.cfg.clip.device, self.cfg.clip.local_files_only)
        return self._sam

    @property
    def class_names(self) -> list[str]:
        return list(self.cfg.classes)

    def set_classes(self, classes: list[str], unseen: list[str] | None = None) -> None:
        """Change the open vocabulary; queued frames are dropped since their score columns change."""
        self.cfg.classes = list(classes)
        self.cfg.unseen_classes = list(unseen or [])
        self.cfg.validate()
        self.reset()

    def set_templates(self, templates: list[str]) -> None:
        self.cfg.clip.templates = list(templates)
        self.cfg.validate()
        if self._labeler is not None:
            self._labeler.templates = list(templates)
        self.reset()

    def reset(self) -> None:
        """Forget queued frames and affinity context (e.g. after a class change or a jump in time)."""
        self._pending.clear()
        self._groups = ClipGroups(self.cfg.affinity)
        self._make_queue()

    def _make_queue(self) -> None:
        from .affinity import OfflineBlockQueue, OnlineWindow

        a = self.cfg.affinity
        if a.mode == "offline":
            self._queue = OfflineBlockQueue(a.scale, a.beta, a.queue_size, a.max_instances)
        else:
            self._queue = OnlineWindow(a.scale, a.beta, a.window_frames)

    def candidate_classes(self) -> np.ndarray:
        """Indices of the classes CLIP may choose (the unseen ones in the zero-shot setting)."""
        if not self.cfg.unseen_classes:
            return np.arange(len(self.cfg.classes))
        return np.array([self.cfg.classes.index(c) for c in self.cfg.unseen_classes])

    def text_embeddings(self) -> np.ndarray:
        """(C, D) normalised, prompt-ensembled text embeddings of the whole class list."""
        emb = self.labeler.text_embeddings(self.cfg.classes)
        return emb.detach().float().cpu().numpy()

    # ----------------------------------------------------------------- per frame
    def process(self, frame: Frame) -> list[LabelledCloud]:
        """Label one frame; returns the frames whose labels are now final (see module doc)."""
        return self._label_now(self.queue_prepared(self.prepare(frame)))

    def flush(self) -> list[LabelledCloud]:
        """Refine and return every frame still queued (offline mode); no-op online."""
        out = self._label_now(self.open_group())
        if self.cfg.affinity.mode != "offline" or not self.cfg.affinity.enabled:
            return out
        return out + [self._finish(self._pending.pop(k), y) for k, y in self._queue.flush()]

    def _label_now(self, group: list[PreparedFrame]) -> list[LabelledCloud]:
        if not group:
            return []
        t0 = time.perf_counter()
        features, scores = self.clip_scores([c for p in group for c in p.crops])
        return self.label_group(group, features, scores, (time.perf_counter() - t0) * 1e3)

    # ----------------------------------------------------------------- the stages apart (labelling jobs)
    def prepare(self, frame: Frame) -> PreparedFrame:
        """Every stage before CLIP (geometry, crops, SAM when enabled); needs no CLIP model."""
        clock = _StageClock()
        g = self.geometry(frame, clock)
        crops, valid, boxes, keep = self._crops(frame, g.projections, g.visible_per_camera, g.instance,
                                                g.num_instances, clock)
        clock.lap("crops")
        return PreparedFrame(frame, g.instance, g.visible, g.num_instances, valid, boxes, keep, crops, clock.times)

    def queue_prepared(self, prepared: PreparedFrame) -> list[PreparedFrame]:
        """Add a prepared frame to the open CLIP group; returns the group it closes ([] while open)."""
        return self._groups.add(prepared)

    def open_group(self) -> list[PreparedFrame]:
        """Take the open CLIP group (end of a sequence or chunk); [] when none."""
        return self._groups.take()

    def clip_scores(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(M, D) features and (M, C) scores of a CLIP group's crops (zeros outside the candidate classes)."""
        cfg = self.cfg
        if not crops:
            return np.zeros((0, 0), dtype=np.float32), np.zeros((0, len(cfg.classes)), dtype=np.float32)
        cand = self.candidate_classes()
        text = self.labeler.text_embeddings([cfg.classes[i] for i in cand])
        features = self.labeler.encode_crops(crops)
        scores = np.zeros((features.shape[0], len(cfg.classes)), dtype=np.float32)
        scores[:, cand] = self.labeler.scores(features, text)
        return features, scores

    def label_group(self, group: list[PreparedFrame], features: np.ndarray, scores: np.ndarray,
                    clip_ms: float = 0.0) -> list[LabelledCloud]:
        """Finish a closed CLIP group with its ``clip_scores`` (groups in the order they closed); returns the
        frames whose labels are now final. ``clip_ms`` is shared among the frames by their crops."""
        out: list[LabelledCloud] = []
        total = sum(len(p.crops) for p in group)
        start = 0
        for p in group:
            m = len(p.crops)
            timings = dict(p.timings_ms)
            timings["clip"] = clip_ms * m / total if total else 0.0
            if m:
                f, y = features[start:start + m], scores[start:start + m]
            else:  # as a frame labelled alone: no feature columns
                f, y = np.zeros((0, 0), dtype=np.float32), np.zeros((0, len(self.cfg.classes)), dtype=np.float32)
            start += m
            out += self._push(_Analysed(p.frame, p.instance, p.visible, p.num_instances, p.valid, p.boxes, y, f,
                                        timings, p.keep))
        return out

    def _push(self, analysed: _Analysed) -> list[LabelledCloud]:
        """Into the affinity stage; the frames it releases, labelled."""
        key = self._next_key
        self._next_key += 1
        a = self.cfg.affinity
        if not a.enabled:
            return [self._finish(analysed, analysed.scores)]
        t0 = time.perf_counter()
        if a.mode == "online":
            refined = self._queue.push(key, analysed.features, analysed.scores)
            analysed.timings_ms["affinity"] = (time.perf_counter() - t0) * 1e3
            return [self._finish(analysed, refined)]
        self._pending[key] = analysed
        ready = self._queue.push(key, analysed.features, analysed.scores)
        # A block is refined when the frame that fills it arrives: that frame carries the cost.
        analysed.timings_ms["affinity"] = (time.perf_counter() - t0) * 1e3
        return [self._finish(self._pending.pop(k), y) for k, y in ready]

    def geometry(self, frame: Frame, clock: "_StageClock | None" = None) -> Geometry:
        """The CLIP-free stages: projection, superpixels, superpoints and visibility."""
        frame.validate()
        finite = finite_points_mask(frame.points)
        if not finite.all():
            # The one non-finite policy (points.py): such points keep their index and get no superpoint.
            return self._finite_geometry(frame.subset(finite), clock).expand(finite)
        return self._finite_geometry(frame, clock)

    def _finite_geometry(self, frame: Frame, clock: "_StageClock | None" = None) -> Geometry:
        """``geometry`` of a validated frame whose points are all finite.

        With ``geometry_threads`` > 1 the images are segmented on helper threads while this thread computes
        the scan cues, the ground fit runs beside the scan lines and the visibility test beside the superpoints
        (OpenCV and numpy's large loops release the GIL). Every part is deterministic, so the result is the same
        with any thread count.
        """
        from .superpoints import image_free_cues, segment_superpoints
        from .image_regions import segment_image
        from .visibility import visible_mask

        cfg = self.cfg
        clock = clock or _StageClock()
        points = np.ascontiguousarray(frame.points[:, :4], dtype=np.float32)
        if not np.isfinite(points[:, 3]).all():
            points = points.copy()
            points[~np.isfinite(points[:, 3]), 3] = 0.0
        n = points.shape[0]

        projections = [project_points(points, cam.K, cam.T_cam_lidar, cam.size, cam.D) for cam in frame.cameras]
        in_view = np.zeros(n, dtype=bool)
        for p in projections:
            in_view |= p.in_image
        eligible = in_view.copy() if cfg.clustering.front_view_only else np.ones(n, dtype=bool)
        if frame.seen_labels is not None:
            eligible &= np.asarray(frame.seen_labels) < 0
        clock.lap("projection")

        def segment(cam, proj):
            return segment_image(cam.image, proj, cfg.visibility, cfg.clustering)

        # With helper threads the laps measure what this thread waited for: a helper's work that overlapped the
        # scan cues or the superpoints is not counted again. (One thread: every job runs at submit.)
        threads = cfg.geometry_threads
        with helper_threads(threads - 1) as helpers:
            segmenting = [helpers.submit(segment, cam, proj) for cam, proj in zip(frame.cameras, projections)]
            clock.lap("superpixels")
            # The ground fit goes to a helper too while the images leave room (on KITTI an image takes ~26 ms, the
            # ground ~20 and the scan lines ~40); queued behind more images it would keep this thread waiting.
            ground_on = helpers if len(frame.cameras) < threads else None
            cues = image_free_cues(points, cfg.clustering, eligible, frame.ring, ground_on)
            clock.lap("scan cues")
            superpixels, regions = [], []
            for job in segmenting:
                sp_map, region_map = job.result()
                superpixels.append(sp_map)
                regions.append(region_map)
            clock.lap("superpixels")
            checking = [helpers.submit(visible_mask, p, sp, cfg.visibility.depth_threshold)
                        for p, sp in zip(projections, superpixels)]
            clock.lap("visibility")
            instance = segment_superpoints(
                points, cfg.clustering, eligible, list(zip(projections, superpixels)),
                None if any(r is None for r in regions) else regions, frame.ring, cues,
            )
            clock.lap("superpoints")
            visible_per_cam = [job.result() for job in checking]
        visible = np.zeros(n, dtype=bool)
        for v in visible_per_cam:
            visible |= v
        clock.lap("visibility")
        m = int(instance.max()) + 1 if instance.size and instance.max() >= 0 else 0
        return Geometry(projections, superpixels, in_view, instance, m, visible_per_cam, visible)

    def _crops(self, frame, projections, visible_per_cam, instance, m, clock):
        """One crop per instance, from the camera that sees most of its points (ties: first camera).

        With ``sam.enabled`` the crops are greyed outside the instances' SAM masks and ``keep`` (N,) is False
        for points outside their instance's mask; otherwise ``keep`` is None.
        """
        from .clip_labeling import crop_images, instance_boxes

        cfg = self.cfg.clip
        boxes = np.zeros((m, 4), dtype=np.int32)
        keep = np.ones(instance.shape[0], dtype=bool) if self.cfg.sam.enabled else None
        if m == 0:
            return [], np.zeros(0, dtype=bool), boxes, keep
        has = instance >= 0
        counts = np.stack([
            np.bincount(instance[has & v], minlength=m) for v in visible_per_cam
        ])  # (cameras, M)
        best = counts.argmax(axis=0)
        valid = counts.max(axis=0) > 0
        crop_of: dict[int, np.ndarray] = {}
        for ci, (cam, proj, vis) in enumerate(zip(frame.cameras, projections, visible_per_cam)):
            chosen = valid & (best == ci)
            if not chosen.any():
                continue
            chosen_instance = np.where(np.isin(instance, np.flatnonzero(chosen)), instance, IGNORE)
            b, has_box = instance_boxes(
                proj.uv, chosen_instance, vis, m, cam.size, cfg.min_crop, cfg.crop_padding,
            )
            boxes[chosen] = b[chosen]
            valid &= ~chosen | has_box
            ids = np.flatnonzero(chosen & has_box)
            cam_crops = crop_images(cam.image, b[ids], np.ones(len(ids), dtype=bool))
            if keep is not None and ids.size:
                cam_crops = self._sam_refine(cam, proj, vis, chosen_instance, ids, b, cam_crops, keep, clock)
            for i, crop in zip(ids, cam_crops):
                crop_of[int(i)] = crop
        crops = [crop_of[int(i)] for i in np.flatnonzero(valid)]
        return crops, valid, boxes, keep

    def _sam_refine(self, cam, proj, vis, chosen_instance, ids, crop_boxes, crops, keep, clock):
        """SAM masks for one camera's instances, prompted by the tight boxes of their visible points."""
        from .clip_labeling import instance_boxes
        from .sam_refine import refine_camera

        clock.lap("crops")
        m = crop_boxes.shape[0]
        tight, _ = instance_boxes(proj.uv, chosen_instance, vis, m, cam.size, min_crop=1, padding=0.0)
        r = refine_camera(self.sam, cam.image, proj.uv, chosen_instance, vis, ids, tight[ids], crop_boxes[ids],
                          crops, self.cfg.sam)
        keep[r.outside] = False
        clock.lap("sam")
        return r.crops

    def _finish(self, a: _Analysed, refined: np.ndarray) -> LabelledCloud:
        t0 = time.perf_counter()
        frame = a.frame
        n = frame.points.shape[0]
        c = len(self.cfg.classes)
        m = a.num_instances
        full_scores = np.zeros((m, c), dtype=np.float32)
        full_refined = np.zeros((m, c), dtype=np.float32)
        full_scores[a.valid] = a.scores
        full_refined[a.valid] = refined
        feat_dim = a.features.shape[1] if a.features.ndim == 2 else 0
        full_features = np.zeros((m, feat_dim), dtype=np.float32)
        full_features[a.valid] = a.features

        label = np.full(n, IGNORE, dtype=np.int32)
        confidence = np.zeros(n, dtype=np.float32)
        inst = a.instance
        take = a.visible & (inst >= 0)
        if a.keep is not None:
            take &= a.keep
        take[take] = a.valid[inst[take]]
        if m:
            best = full_refined.argmax(axis=1).astype(np.int32)
            conf = full_refined.max(axis=1)
            label[take] = best[inst[take]]
            confidence[take] = conf[inst[take]]
        if frame.seen_labels is not None:
            seen = np.asarray(frame.seen_labels) >= 0
            label[seen] = np.asarray(frame.seen_labels)[seen]
            confidence[seen] = 1.0
        timings = dict(a.timings_ms)
        timings["labels"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = sum(timings.values())
        return LabelledCloud(
            frame=frame,
            class_names=list(self.cfg.classes),
            label=label,
            confidence=confidence,
            instance=inst.astype(np.int32),
            visible=a.visible,
            instance_scores=full_scores,
            instance_refined=full_refined,
            instance_features=full_features,
            instance_valid=a.valid.copy(),
            instance_boxes=a.boxes,
            timings_ms=timings,
        )

"""CLIP crop labelling: boxes, crops, preprocessing, text/image embeddings, scores and loading errors.

A small randomly initialised CLIP (real tokenizer) stands in for the weights, which are not available here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from partlift_ros.clip_labeling import (
    ClipLabeler,
    ModelLoadError,
    crop_images,
    instance_boxes,
    prompt_name,
)
from partlift_ros.config import ClipConfig
from partlift_ros.types import InputError

TINY = dict(
    text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       image_size=224, patch_size=32),
    projection_dim=32,
)


def tiny_config():
    from transformers import CLIPConfig

    return CLIPConfig(**TINY)


@pytest.fixture(scope="module")
def labeler(tokenizer_dir: Path) -> ClipLabeler:
    return ClipLabeler.from_config(tiny_config(), tokenizer_dir, ClipConfig(batch_size=8), seed=0)


@pytest.fixture(scope="module")
def kitti_image(seq08: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(seq08 / "image_2" / "000000.png").convert("RGB"))


def random_crops(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [(30, 30), (100, 40), (300, 500), (224, 224), (17, 300), (61, 83), (250, 120), (40, 41), (90, 90)]
    # Smooth gradients plus noise: closer to photos than pure noise, still exercises the resampling.
    crops = []
    for h, w in sizes:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255.0 / w, yy * 255.0 / h, (xx + yy) * 127.0 / (h + w)], axis=-1)
        crops.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    return crops


# ----------------------------------------------------------------------------- boxes and crops
def test_instance_boxes_known_answer_with_padding_and_min_size():
    uv = np.array([[10.5, 20.2], [50.7, 40.0], [30.0, 30.0], [200.0, 100.0], [5.0, 5.0]])
    instance = np.array([0, 0, 0, -1, 1], dtype=np.int32)
    visible = np.array([True, True, True, True, False])
    boxes, has = instance_boxes(uv, instance, visible, 3, (640, 480), min_crop=30, padding=0.1)
    # Instance 0: pixels u 10..50, v 20..40 -> [10, 20, 51, 41); +10% of (41, 21) each side ->
    # u [5.9, 55.1], v [17.9, 43.1]; v is 25.2 < 30 -> grown by 2.4 each side -> [15.5, 45.5].
    assert boxes[0].tolist() == [5, 15, 56, 46]
    assert has.tolist() == [True, False, False]  # 1: its only point is occluded; 2: no points
    assert boxes[1].tolist() == [0, 0, 0, 0] and boxes[2].tolist() == [0, 0, 0, 0]


def test_instance_boxes_single_point_grows_to_min_crop_and_clips_at_border():
    uv = np.array([[100.2, 50.9], [2.0, 3.0], [639.5, 479.5]])
    boxes, has = instance_boxes(uv, np.array([0, 1, 2]), np.ones(3, bool), 3, (640, 480), min_crop=30, padding=0.0)
    assert has.all()
    # One pixel [100, 50, 101, 51) grown to 30x30 around its centre: [85.5, 35.5, 115.5, 65.5],
    # rounded outwards to whole pixels.
    assert boxes[0].tolist() == [85, 35, 116, 66]
    assert boxes[1].tolist() == [0, 0, 18, 19]  # [-13, -12, 18, 19) clipped at the top-left corner
    assert boxes[2].tolist() == [624, 464, 640, 480]  # clipped at the bottom-right corner


def test_instance_boxes_large_instance_is_not_grown_and_rejects_bad_ids():
    rng = np.random.default_rng(0)
    uv = np.column_stack([rng.uniform(100, 300, 500), rng.uniform(50, 150, 500)])
    uv[0], uv[1] = (100.0, 50.0), (299.0, 149.0)
    boxes, has = instance_boxes(uv, np.zeros(500, np.int32), np.ones(500, bool), 1, (1226, 370), 30, 0.0)
    assert boxes[0].tolist() == [100, 50, 300, 150] and has[0]
    with pytest.raises(InputError, match="num_instances"):
        instance_boxes(uv, np.full(500, 3, np.int32), np.ones(500, bool), 2, (1226, 370))
    with pytest.raises(InputError, match="expected uv"):
        instance_boxes(uv[:10], np.zeros(500, np.int32), np.ones(500, bool), 1, (1226, 370))
    empty, none = instance_boxes(np.zeros((0, 2)), np.zeros(0, np.int32), np.zeros(0, bool), 2, (10, 10))
    assert empty.shape == (2, 4) and not none.any()


def test_instance_boxes_ignores_non_finite_projections():
    uv = np.array([[np.nan, 5.0], [40.0, 40.0]])
    boxes, has = instance_boxes(uv, np.array([0, 0]), np.ones(2, bool), 1, (100, 100), min_crop=1, padding=0.0)
    assert has[0] and boxes[0].tolist() == [40, 40, 41, 41]


def test_instance_boxes_on_a_real_kitti_frame(seq08: Path, kitti_image: np.ndarray, labeler: ClipLabeler):
    from partlift_ros.calibration import parse_kitti_calib, project_points

    points = np.fromfile(seq08 / "velodyne" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    raw = np.fromfile(seq08 / "labels" / "000000.label", dtype=np.uint32)
    calib = parse_kitti_calib(seq08 / "calib.txt")
    h, w = kitti_image.shape[:2]
    proj = project_points(points, calib.K, calib.T_cam_lidar, (w, h))
    # Ground-truth object instances (upper 16 bits) as 0..M-1, every other point -1.
    objects = raw >> 16
    keys, inverse = np.unique(objects[objects > 0], return_inverse=True)
    instance = np.full(len(points), -1, np.int32)
    instance[objects > 0] = inverse
    m = len(keys)
    assert m >= 3, "frame 0 of sequence 08 has several labelled objects"
    boxes, has = instance_boxes(proj.uv, instance, proj.in_image, m, (w, h), min_crop=1, padding=0.0)
    for i in range(m):  # reference, one instance at a time
        uv = proj.uv[(instance == i) & proj.in_image]
        assert has[i] == (len(uv) > 0)
        if len(uv):
            lo, hi = np.floor(uv.min(0)), np.floor(uv.max(0)) + 1
            assert boxes[i].tolist() == [int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])]
    padded, has_p = instance_boxes(proj.uv, instance, proj.in_image, m, (w, h))
    assert (has_p == has).all()
    assert (padded[has, :2] <= boxes[has, :2]).all() and (padded[has, 2:] >= boxes[has, 2:]).all()
    assert (padded[:, [0, 2]] <= w).all() and (padded[:, [1, 3]] <= h).all() and (padded >= 0).all()
    crops = crop_images(kitti_image, padded, has_p)
    assert len(crops) == int(has_p.sum()) and all(min(c.shape[:2]) >= 1 for c in crops)
    features = labeler.encode_crops(crops)
    assert features.shape == (len(crops), labeler.embedding_dim) and np.isfinite(features).all()


def test_crop_images_cuts_the_boxes_in_instance_order():
    image = np.arange(60 * 80 * 3, dtype=np.uint32).reshape(60, 80, 3).astype(np.uint8)
    boxes = np.array([[0, 0, 10, 20], [5, 5, 6, 6], [30, 10, 80, 60]], dtype=np.int32)
    crops = crop_images(image, boxes, np.array([True, False, True]))
    assert [c.shape for c in crops] == [(20, 10, 3), (50, 50, 3)]
    np.testing.assert_array_equal(crops[1], image[10:60, 30:80])
    with pytest.raises(InputError, match="uint8 RGB"):
        crop_images(image.astype(np.float32), boxes, np.ones(3, bool))


# ----------------------------------------------------------------------------- preprocessing
def test_torch_preprocessing_matches_clip_image_processor(labeler: ClipLabeler):
    crops = random_crops()
    ref = labeler.image_processor(crops, return_tensors="pt")["pixel_values"]
    ours = labeler.preprocess(crops, torch.device("cpu"), torch.float32)
    assert ours.shape == ref.shape == (len(crops), 3, 224, 224)
    diff = (ours - ref).abs()
    # Equal up to a rare +-1..2 grey level from the resampler's rounding (1/255/std ~ 0.015 per level).
    assert diff.max() < 0.05
    assert diff.mean() < 1e-3


def test_preprocessing_leaves_the_torch_thread_count_as_it_was(labeler: ClipLabeler):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        labeler.preprocess(random_crops()[:2], torch.device("cpu"), torch.float32)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_torch_preprocessing_matches_on_real_kitti_crops(labeler: ClipLabeler, kitti_image: np.ndarray):
    boxes = np.array([[0, 0, 1226, 370], [500, 150, 560, 200], [100, 120, 400, 370], [900, 0, 930, 300]])
    crops = crop_images(kitti_image, boxes, np.ones(len(boxes), bool))
    ref = labeler.image_processor(crops, return_tensors="pt")["pixel_values"]
    ours = labeler.preprocess(crops, torch.device("cpu"), torch.float32)
    assert (ours - ref).abs().max() < 0.05


# ----------------------------------------------------------------------------- text
def test_class_names_become_words():
    assert prompt_name("traffic-sign") == "traffic sign"
    assert prompt_name("other_vehicle") == "other vehicle"


def test_text_embeddings_are_the_normalised_mean_over_templates(labeler: ClipLabeler):
    classes = ["car", "traffic-sign", "vegetation"]
    emb = labeler.text_embeddings(classes)
    assert emb.shape == (3, labeler.embedding_dim) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    # Manual: one prompt at a time, no padding, straight through the model.
    manual = []
    with torch.inference_mode():
        for name in ("car", "traffic sign", "vegetation"):
            per_template = []
            for template in labeler.cfg.templates:
                tok = labeler.tokenizer([template.format(name)], return_tensors="pt")
                pooled = labeler.model.text_model(**tok).pooler_output
                e = labeler.model.text_projection(pooled)[0]
                per_template.append(e / e.norm())
            mean = torch.stack(per_template).mean(0)
            manual.append(mean / mean.norm())
    torch.testing.assert_close(emb, torch.stack(manual), atol=1e-5, rtol=1e-5)


def test_text_embeddings_are_cached_and_follow_template_changes(tokenizer_dir: Path, monkeypatch):
    lab = ClipLabeler.from_config(tiny_config(), tokenizer_dir, ClipConfig(), seed=0)
    calls = []
    original = lab._encode_texts
    monkeypatch.setattr(lab, "_encode_texts", lambda prompts: calls.append(list(prompts)) or original(prompts))
    a = lab.text_embeddings(["car", "road"])
    b = lab.text_embeddings(["car", "road"])
    assert len(calls) == 1 and torch.equal(a, b)
    b.zero_()  # callers get a copy: the cache is not corrupted
    assert torch.equal(lab.text_embeddings(["car", "road"]), a)
    assert len(calls) == 1
    lab.templates = ["a photo of a {}."]
    single = lab.text_embeddings(["car", "road"])
    assert len(calls) == 2 and calls[1] == ["a photo of a car.", "a photo of a road."]
    assert not torch.allclose(single, a)
    lab.cfg.templates = list(ClipConfig().templates)  # the pipeline edits cfg.templates directly
    assert torch.equal(lab.text_embeddings(["car", "road"]), a) and len(calls) == 2
    with pytest.raises(InputError, match="must contain"):
        lab.templates = ["no slot here"]
    lab.templates = ["{}"]
    for i in range(12):
        lab.text_embeddings([f"class {i}"])
    assert len(lab._text_cache) <= 8  # bounded when vocabularies keep changing


# ----------------------------------------------------------------------------- images and scores
def test_encode_crops_normalised_and_batch_size_invariant(labeler: ClipLabeler, monkeypatch):
    crops = random_crops(1)  # 9 crops: batches of 8 leave a remainder of 1
    monkeypatch.setattr(labeler.cfg, "batch_size", 1)
    f1 = labeler.encode_crops(crops)
    monkeypatch.setattr(labeler.cfg, "batch_size", 8)
    f8 = labeler.encode_crops(crops)
    assert f1.shape == (len(crops), 32) and f1.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f1, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(f1, f8, atol=1e-5)
    assert not np.allclose(f1[0], f1[1], atol=1e-3)  # different crops, different features
    assert labeler.encode_crops([]).shape == (0, 32)
    with pytest.raises(InputError, match="uint8 RGB"):
        labeler.encode_crops([np.zeros((0, 5, 3), np.uint8)])


def test_encode_crops_matches_the_model_on_processor_pixels(labeler: ClipLabeler):
    crops = random_crops(2)[:4]
    pixels = labeler.image_processor(crops, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        ref = labeler.model.get_image_features(pixel_values=pixels)
        ref = getattr(ref, "pooler_output", ref)
        ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    np.testing.assert_allclose(labeler.encode_crops(crops), ref, atol=2e-3)


def test_scores_are_the_scaled_softmax(labeler: ClipLabeler):
    features = labeler.encode_crops(random_crops(3)[:5])
    text = labeler.text_embeddings(["car", "person", "road", "pole"])
    s = labeler.scores(features, text)
    assert s.shape == (5, 4) and s.dtype == np.float32
    np.testing.assert_allclose(s.sum(axis=1), 1.0, atol=1e-6)
    logits = np.exp(float(labeler.model.logit_scale.detach())) * features @ text.numpy().T
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(s, expected / expected.sum(1, keepdims=True), atol=1e-6)
    # A feature equal to a class's text embedding scores highest for that class.
    assert labeler.scores(text.numpy()[[2]], text).argmax() == 2
    assert labeler.scores(np.zeros((0, 32), np.float32), text).shape == (0, 4)
    with pytest.raises(InputError, match="features"):
        labeler.scores(features[:, :5], text)


# ----------------------------------------------------------------------------- loading
def test_load_round_trips_a_saved_model(tokenizer_dir: Path, tmp_path: Path):
    from transformers import CLIPModel

    torch.manual_seed(0)
    model = CLIPModel(tiny_config())
    model.save_pretrained(tmp_path / "clip")
    # torch on both sides: this is about loading (exported backends: test_clip_backends.py).
    loaded = ClipLabeler.load(ClipConfig(model=str(tmp_path / "clip"), processor=str(tokenizer_dir), backend="torch"))
    original = ClipLabeler(ClipConfig(backend="torch"), model, loaded.processor)
    crops = random_crops(4)[:3]
    np.testing.assert_allclose(loaded.encode_crops(crops), original.encode_crops(crops), atol=1e-6)
    # Without clip.processor the tokenizer is looked up beside the weights, and its absence is explained.
    with pytest.raises(ModelLoadError, match="clip.processor"):
        ClipLabeler.load(ClipConfig(model=str(tmp_path / "clip")))
    for f in tokenizer_dir.iterdir():
        (tmp_path / "clip" / f.name).write_bytes(f.read_bytes())
    beside = ClipLabeler.load(ClipConfig(model=str(tmp_path / "clip"), backend="torch"))
    torch.testing.assert_close(beside.text_embeddings(["car"]), original.text_embeddings(["car"]))


def test_load_errors_say_what_is_wrong(tmp_path: Path, tokenizer_dir: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        ClipLabeler.load(ClipConfig(model=str(empty)))

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ModelLoadError, match="'bert' model, not 'clip'"):
        ClipLabeler.load(ClipConfig(model=str(bert)))

    no_weights = tmp_path / "no_weights"
    tiny_config().save_pretrained(no_weights)
    with pytest.raises(ModelLoadError, match="no weights"):
        ClipLabeler.load(ClipConfig(model=str(no_weights)))

    with pytest.raises(ModelLoadError, match="does not exist"):
        ClipLabeler.load(ClipConfig(model=str(tmp_path / "missing" / "clip")))

    # A hub id that is not cached, with the hub off limits: a clear error that says how to get weights.
    with pytest.raises(ModelLoadError, match="internet") as info:
        ClipLabeler.load(ClipConfig(model="openai/clip-vit-base-patch32", local_files_only=True))
    assert "openai/clip-vit-base-patch32" in str(info.value)

    # Tokenizer folder without the preprocessor config.
    partial = tmp_path / "tok_only"
    partial.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (partial / name).write_bytes((tokenizer_dir / name).read_bytes())
    with pytest.raises(ModelLoadError, match="preprocessor_config.json"):
        ClipLabeler.from_config(tiny_config(), partial)


def test_mismatched_tokenizer_or_image_size_is_refused(tokenizer_dir: Path):
    from transformers import CLIPConfig

    small_vocab = CLIPConfig(**{**TINY, "text_config": {**TINY["text_config"], "vocab_size": 1000}})
    with pytest.raises(ModelLoadError, match="tokenizer"):
        ClipLabeler.from_config(small_vocab, tokenizer_dir)
    other_size = CLIPConfig(**{**TINY, "vision_config": {**TINY["vision_config"], "image_size": 96}})
    with pytest.raises(ModelLoadError, match="224x224"):
        ClipLabeler.from_config(other_size, tokenizer_dir)


def test_from_config_is_deterministic_per_seed(tokenizer_dir: Path, labeler: ClipLabeler):
    crops = random_crops(5)[:2]
    a = ClipLabeler.from_config(tiny_config(), tokenizer_dir, seed=0).encode_crops(crops)
    np.testing.assert_array_equal(a, labeler.encode_crops(crops))  # the fixture is seed 0 too
    b = ClipLabeler.from_config(tiny_config(), tokenizer_dir, seed=2).encode_crops(crops)
    assert not np.allclose(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_in_half_precision_and_agrees_with_cpu(tokenizer_dir: Path):
    crops = random_crops(6)[:4]
    cpu = ClipLabeler.from_config(tiny_config(), tokenizer_dir, ClipConfig(device="cpu"), seed=0)
    gpu = ClipLabeler.from_config(tiny_config(), tokenizer_dir, ClipConfig(device="cuda"), seed=0)
    assert gpu.dtype == torch.float16 and next(gpu.model.parameters()).dtype == torch.float16
    np.testing.assert_allclose(gpu.encode_crops(crops), cpu.encode_crops(crops), atol=2e-2)
    torch.testing.assert_close(gpu.text_embeddings(["car"]), cpu.text_embeddings(["car"]), atol=2e-2, rtol=0)


def test_cuda_device_without_cuda_is_a_load_error(tokenizer_dir: Path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        ClipLabeler.from_config(tiny_config(), tokenizer_dir, ClipConfig(device="cuda"))

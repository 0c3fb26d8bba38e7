"""SAM-refined instances: box-prompted masks, crop greying, point dropping, and the pipeline stage.

Randomly initialised tiny SAMs (both backends) stand in for real weights: the tests check the maths
around the model (shapes, batching, one encoding per image, agreement with segment_anything's own
Sam.forward, what the masks do to crops and points), not the quality of the masks.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from partlift_ros.config import ConfigError, PipelineConfig, SamConfig, apply_overrides, flatten  # noqa: E402
from partlift_ros.sam_refine import (  # noqa: E402
    CROP_FILL, BoxMasker, SamLoadError, build_segment_anything, grey_outside, points_in_masks, refine_camera,
    segment_anything_registry,
)
from partlift_ros.types import IGNORE  # noqa: E402


def tiny_segment_anything(seed: int = 0):
    """segment_anything's Sam with a 128 px, 2-block ViT: the real modules, small enough for CPU tests."""
    segment_anything_registry()  # registers the package without its torchvision-importing __init__
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=32, img_size=128, mlp_ratio=2, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1],
            window_size=4, out_chans=32,
        ),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(128, 128),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2),
            transformer_dim=32, iou_head_depth=2, iou_head_hidden_dim=32,
        ),
    ).eval()


def tiny_transformers_sam(seed: int = 0):
    from transformers import SamConfig as HfSamConfig
    from transformers import SamModel

    torch.manual_seed(seed)
    config = HfSamConfig(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=128, patch_size=16, window_size=4, global_attn_indexes=[1], mlp_dim=64,
                           num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, num_hidden_layers=1,
                                 iou_head_hidden_dim=32),
    )
    return SamModel(config).eval()


@pytest.fixture(scope="module")
def sam_model():
    return tiny_segment_anything()


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(60, 100, 3), dtype=np.uint8)
    img[10:40, 20:60] = (200, 30, 30)  # a block SAM can react to
    return img


BOXES = np.array([[20, 10, 60, 40], [0, 0, 100, 60], [5, 30, 25, 58], [70, 5, 99, 20], [40, 20, 41, 21]])


class CountCalls:
    """Forward hook counting calls of one module."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, *_):
        self.calls += 1


# ----------------------------------------------------------------------------- masks
def test_masks_have_the_image_size_one_per_box_and_match_sam_forward(sam_model, image):
    import torch.nn.functional as F

    masker = BoxMasker.from_segment_anything(sam_model, box_batch_size=2)
    masks = masker.masks(image, BOXES)
    assert masks.shape == (len(BOXES), 60, 100) and masks.dtype == bool
    assert masks.any() and not masks.all()  # the random model still gives non-trivial masks

    # segment_anything's own end-to-end Sam.forward on the same resized image and transformed boxes.
    in_h, in_w = masker.input_hw(60, 100)
    assert (in_h, in_w) == (77, 128)  # ResizeLongestSide: int(60 * 1.28 + 0.5)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
    resized = F.interpolate(x, size=(in_h, in_w), mode="bilinear", antialias=True, align_corners=False)
    sam_boxes = (BOXES - [0, 0, 1, 1]) * [in_w / 100, in_h / 60, in_w / 100, in_h / 60]
    ref = sam_model([{"image": resized[0].float(), "original_size": (60, 100),
                      "boxes": torch.as_tensor(sam_boxes, dtype=torch.float32)}], multimask_output=False)
    expected = ref[0]["masks"][:, 0].numpy()
    assert (masks != expected).mean() < 1e-4  # pixels with logits at ~0 may flip between batchings


def test_box_batch_size_does_not_change_masks(sam_model, image):
    one_by_one = BoxMasker.from_segment_anything(sam_model, box_batch_size=1).masks(image, BOXES)
    together = BoxMasker.from_segment_anything(sam_model, box_batch_size=64).masks(image, BOXES)
    assert (one_by_one != together).mean() < 1e-4
    assert BoxMasker.from_segment_anything(sam_model).masks(image, np.zeros((0, 4))).shape == (0, 60, 100)


def test_image_is_encoded_once_for_many_boxes(sam_model, image):
    masker = BoxMasker.from_segment_anything(sam_model, box_batch_size=8)
    enc, dec = CountCalls(sam_model.image_encoder), CountCalls(sam_model.mask_decoder)
    try:
        boxes = np.tile(BOXES, (8, 1))  # 40 boxes
        masks = masker.masks(image, boxes)
    finally:
        enc.handle.remove()
        dec.handle.remove()
    assert masks.shape == (40, 60, 100)
    assert enc.calls == 1
    assert dec.calls == 5  # 40 boxes in batches of 8


def test_transformers_backend_gives_batched_masks_and_loads_from_a_folder(image, tmp_path):
    model = tiny_transformers_sam()
    masker = BoxMasker.from_transformers(model, box_batch_size=3)
    enc = CountCalls(model.vision_encoder)
    try:
        masks = masker.masks(image, BOXES)
    finally:
        enc.handle.remove()
    assert masks.shape == (len(BOXES), 60, 100) and masks.dtype == bool
    assert enc.calls == 1
    model.save_pretrained(tmp_path / "sam")
    loaded = BoxMasker.load(SamConfig(backend="transformers", checkpoint=str(tmp_path / "sam"), box_batch_size=3))
    np.testing.assert_array_equal(loaded.masks(image, BOXES), masks)


# ----------------------------------------------------------------------------- crops and points
def test_grey_outside_keeps_masked_pixels_and_fills_the_rest(image):
    crop = image[10:40, 20:60]
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:25, 10:30] = True
    grey = grey_outside(crop, mask)
    np.testing.assert_array_equal(grey[mask], crop[mask])
    assert (grey[~mask] == CROP_FILL).all()
    assert grey.shape == crop.shape and grey.dtype == np.uint8
    assert (crop == (200, 30, 30)).all()  # the image itself is untouched


class KnownMasks:
    """A masker returning fixed masks: instance 0 -> left half of the image, instance 1 -> nothing."""

    def __init__(self, h, w):
        self.masks_out = np.zeros((2, h, w), dtype=bool)
        self.masks_out[0, :, : w // 2] = True
        self.boxes_seen = None

    def masks(self, image, boxes):
        self.boxes_seen = np.asarray(boxes)
        return self.masks_out


def test_points_outside_a_reliable_mask_are_dropped_and_failed_masks_are_ignored():
    h, w = 20, 30
    image = np.full((h, w, 3), 50, dtype=np.uint8)
    # instance 0: 3 points inside the left half, 1 outside; instance 1: empty mask (failed);
    # instance 0's last point is not visible (occluded): never judged.
    uv = np.array([[2.5, 3.0], [10.2, 8.0], [14.9, 19.9], [20.0, 5.0], [25.0, 10.0], [26.0, 11.0], [22.0, 2.0]])
    instance = np.array([0, 0, 0, 0, 1, 1, 0])
    visible = np.array([True, True, True, True, True, True, False])
    boxes = np.array([[0, 0, 21, 20], [24, 9, 27, 12]])
    crops = [image[v0:v1, u0:u1] for u0, v0, u1, v1 in boxes]

    masker = KnownMasks(h, w)
    r = refine_camera(masker, image, uv, instance, visible, np.array([0, 1]), boxes, boxes, crops, SamConfig())
    np.testing.assert_array_equal(masker.boxes_seen, boxes)
    np.testing.assert_allclose(r.point_fraction, [0.75, 0.0])
    np.testing.assert_array_equal(r.reliable, [True, False])
    np.testing.assert_array_equal(r.outside, [False, False, False, True, False, False, False])
    # Crop 0 is greyed right of u = 15; crop 1 (failed mask) is left as it was.
    assert (r.crops[0][:, :15] == 50).all() and (r.crops[0][:, 15:] == CROP_FILL).all()
    np.testing.assert_array_equal(r.crops[1], crops[1])

    off = refine_camera(masker, image, uv, instance, visible, np.array([0, 1]), boxes, boxes, crops,
                        SamConfig(drop_outside=False, mask_crops=False))
    assert not off.outside.any()
    assert off.crops[0] is crops[0]
    strict = refine_camera(masker, image, uv, instance, visible, np.array([0, 1]), boxes, boxes, crops,
                           SamConfig(min_point_fraction=0.8))
    assert not strict.reliable.any() and not strict.outside.any()


def test_points_in_masks_uses_the_pixel_under_each_point_and_rejects_off_image_points():
    masks = np.zeros((2, 4, 5), dtype=bool)
    masks[0, 1, 2] = True
    masks[1, 3, 4] = True
    uv = np.array([[2.99, 1.01], [2.0, 1.0], [4.5, 3.5], [5.0, 3.0], [np.nan, 1.0], [-0.1, 0.0]])
    rows = np.array([0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(points_in_masks(uv, rows, masks), [True, False, True, False, False, False])


# ----------------------------------------------------------------------------- the pipeline stage
class RecordingMasker(BoxMasker):
    """The real tiny-SAM masker, keeping every (boxes, masks) it returned."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def masks(self, image, boxes):
        out = super().masks(image, boxes)
        self.calls.append((np.asarray(boxes).copy(), out))
        return out


@pytest.fixture(scope="module")
def labeler(tokenizer_dir):
    from conftest import tiny_clip_config
    from partlift_ros.clip_labeling import ClipLabeler

    return ClipLabeler.from_config(tiny_clip_config(), tokenizer_dir, PipelineConfig().clip)


@pytest.fixture(scope="module")
def frame(seq08):
    from partlift_ros.io.kitti import KittiSequenceReader

    reader = KittiSequenceReader(seq08)
    return reader.read(reader.frame_indices[0])


def test_pipeline_with_sam_labels_no_point_outside_its_instance_mask(labeler, frame, sam_model):
    from partlift_ros.calibration import project_points
    from partlift_ros.pipeline import LabelPipeline

    base = {"affinity.enabled": False}
    (plain,) = LabelPipeline(apply_overrides(PipelineConfig(), base), labeler=labeler).process(frame)
    masker = RecordingMasker.from_segment_anything(sam_model)
    cfg = apply_overrides(PipelineConfig(), {**base, "sam.enabled": "true", "sam.min_point_fraction": 0.0})
    (out,) = LabelPipeline(cfg, labeler=labeler, sam=masker).process(frame)

    # One SAM call for the one camera, one prompt per instance with a crop, masks of the image size.
    (boxes, masks), = masker.calls
    ids = np.flatnonzero(out.instance_valid)
    h, w = frame.camera.image.shape[:2]
    assert masks.shape == (len(ids), h, w)
    np.testing.assert_array_equal(out.instance_valid, plain.instance_valid)  # same geometry and crops
    # Prompts are the tight boxes of the instances' points, inside the padded crop boxes.
    assert (boxes[:, :2] >= out.instance_boxes[ids, :2]).all() and (boxes[:, 2:] <= out.instance_boxes[ids, 2:]).all()

    # Expected: the points labelled without SAM, minus those whose pixel is outside their instance's mask.
    cam = frame.camera
    uv = project_points(frame.points, cam.K, cam.T_cam_lidar, cam.size, cam.D).uv
    row_of = np.full(out.num_instances, -1)
    row_of[ids] = np.arange(len(ids))
    was = plain.label != IGNORE
    u = np.floor(uv[was, 0]).astype(int)
    v = np.floor(uv[was, 1]).astype(int)
    inside = masks[row_of[out.instance[was]], v, u]
    expected = was.copy()
    expected[was] = inside
    np.testing.assert_array_equal(out.label != IGNORE, expected)
    assert 0 < expected.sum() < was.sum()  # the masks dropped some points and kept others
    # Greyed crops change what CLIP sees.
    assert not np.allclose(out.instance_scores[out.instance_valid], plain.instance_scores[plain.instance_valid])
    assert out.timings_ms["sam"] > 0 and "sam" not in plain.timings_ms


# ----------------------------------------------------------------------------- config and loading
def test_sam_keys_are_part_of_the_config_schema():
    flat = flatten(PipelineConfig())
    assert flat["sam.enabled"] is False and flat["sam.model_type"] == "vit_b"
    assert {"sam.checkpoint", "sam.backend", "sam.mask_crops", "sam.drop_outside", "sam.device"} <= set(flat)
    with pytest.raises(ConfigError, match="sam.backend"):
        apply_overrides(PipelineConfig(), {"sam.backend": "mobile"})


def test_loading_errors_name_the_problem(tmp_path, image):
    with pytest.raises(SamLoadError, match="checkpoint is empty"):
        BoxMasker.load(SamConfig(enabled=True))
    with pytest.raises(SamLoadError, match="not found"):
        BoxMasker.load(SamConfig(checkpoint=str(tmp_path / "sam_vit_b.pth")))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(SamLoadError, match="not a readable torch checkpoint"):
        BoxMasker.load(SamConfig(checkpoint=str(garbage)))
    with pytest.raises(SamLoadError, match="not one of"):
        build_segment_anything("vit_tiny")
    with pytest.raises(SamLoadError, match="no config.json"):
        BoxMasker.load(SamConfig(backend="transformers", checkpoint=str(tmp_path)))

    # A checkpoint of another architecture: the real vit_b registry build refuses it.
    tiny = tiny_segment_anything(seed=1)
    tiny_ckpt = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), tiny_ckpt)
    with pytest.raises(SamLoadError, match="not a SAM vit_b checkpoint"):
        BoxMasker.load(SamConfig(checkpoint=str(tiny_ckpt), model_type="vit_b"))
    # The same file loads into its own architecture and gives the same masks.
    loaded = build_segment_anything("tiny", tiny_ckpt, registry={"tiny": lambda: tiny_segment_anything(seed=2)})
    np.testing.assert_array_equal(BoxMasker.from_segment_anything(loaded).masks(image, BOXES),
                                  BoxMasker.from_segment_anything(tiny).masks(image, BOXES))


def test_real_vit_b_registry_architecture_builds_without_torchvision():
    import sys

    model = build_segment_anything("vit_b")
    assert "torchvision" not in sys.modules
    assert sum(p.numel() for p in model.parameters()) == 93_735_472
    assert BoxMasker.from_segment_anything(model).input_hw(370, 1226) == (309, 1024)


def test_pipeline_loads_sam_lazily_and_reports_a_missing_checkpoint(labeler, frame):
    from partlift_ros.pipeline import LabelPipeline

    pipe = LabelPipeline(apply_overrides(PipelineConfig(), {"sam.enabled": True}), labeler=labeler)
    with pytest.raises(SamLoadError, match="checkpoint is empty"):
        pipe.process(frame)

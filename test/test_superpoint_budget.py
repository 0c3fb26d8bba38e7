"""The superpoint budget follows the view (solid angle), not the cameras or the point count; removed config keys
load with a warning; the sensor variants of the benchmarks are built as a reader delivers them (real frames)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from partlift_ros.config import ClusteringConfig, ConfigError, PipelineConfig, load_config
from partlift_ros.pipeline import LabelPipeline
from partlift_ros.superpoints.budget import superpoint_budget, view_solid_angle
from partlift_ros.types import IGNORE


def _view(az_deg: tuple[float, float], el_deg: tuple[float, float], rings: int, step_deg: float = 0.2) -> np.ndarray:
    """Points at 10 m on ``rings`` evenly spaced elevations over an azimuth range (a LiDAR seen by one camera)."""
    az, el = np.meshgrid(np.deg2rad(np.arange(*az_deg, step_deg)), np.deg2rad(np.linspace(*el_deg, rings)))
    az, el = az.ravel(), el.ravel()
    return 10.0 * np.c_[np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)]


def test_solid_angle_of_a_view_matches_the_formula_and_ignores_density():
    front = _view((-45, 45), (-24.8, 2.0), 64)
    expected = np.pi / 2 * (np.sin(np.deg2rad(2.0)) - np.sin(np.deg2rad(-24.8)))
    assert view_solid_angle(front) == pytest.approx(expected, rel=0.02)
    # A 16-beam sensor over the same view, or the points twice (two cameras seeing the same view): same angle.
    assert view_solid_angle(_view((-45, 45), (-24.8, 2.0), 16)) == pytest.approx(expected, rel=0.02)
    assert view_solid_angle(np.r_[front, front]) == pytest.approx(view_solid_angle(front))
    # Two cameras looking apart (front and back) cover twice the angle; the empty sides count nothing.
    back = _view((135, 225), (-24.8, 2.0), 64)
    assert view_solid_angle(np.r_[front, back]) == pytest.approx(2 * expected, rel=0.03)


def test_budget_scales_with_the_view_not_the_density():
    cfg = ClusteringConfig()
    kitti_front = _view((-41, 41), (-24.8, 2.0), 64)  # KITTI's left colour camera sees ~82 deg of azimuth
    assert superpoint_budget(_view((-41, 41), (-24.8, 2.0), 16), cfg) == pytest.approx(
        superpoint_budget(kitti_front, cfg), rel=0.02)
    surround = _view((-180, 180), (-24.8, 2.0), 64)
    assert superpoint_budget(surround, cfg) == pytest.approx(360 / 82 * superpoint_budget(kitti_front, cfg), rel=0.03)
    assert superpoint_budget(surround, ClusteringConfig(max_superpoints=300)) == 300  # a fixed budget


def test_config_checks_the_budget_keys():
    cfg = PipelineConfig()
    cfg.clustering.superpoint_density = 0.0
    with pytest.raises(ConfigError, match="superpoint_density"):
        cfg.validate()
    cfg.clustering.max_superpoints = 300  # a fixed budget needs no density
    cfg.validate()
    cfg.clustering.max_superpoints = -1
    with pytest.raises(ConfigError, match="max_superpoints"):
        cfg.validate()


def test_a_config_that_sets_the_removed_normal_weight_loads_with_a_warning(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("clustering:\n  normal_weight: 2.0\n  eps: 0.7\n")
    with pytest.warns(FutureWarning, match="clustering.normal_weight"):
        cfg = load_config(path)
    assert cfg.clustering.eps == 0.7 and not hasattr(cfg.clustering, "normal_weight")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, {"clustering.eps": 0.6})  # other keys: no warning


@pytest.fixture(scope="module")
def seq08_frame(seq08):
    from partlift_ros.testing.sensors import kitti_frames

    return next(kitti_frames(seq08, frames=slice(0, 1)))


def test_sensor_variants_are_built_as_a_reader_delivers_them(seq08_frame):
    from partlift_ros.testing.sensors import every_nth_laser, intensity_255, organised, random_order

    item = seq08_frame
    n = item.frame.points.shape[0]
    loud = intensity_255(item)  # uint8 field -> the reader's 0..1
    np.testing.assert_allclose(loud.frame.points[:, 3], item.frame.points[:, 3], atol=0.5 / 255 + 1e-6)
    shuffled = random_order(item)
    order = np.lexsort(shuffled.frame.points[:, :3].T[::-1])
    reference = np.lexsort(item.frame.points[:, :3].T[::-1])
    np.testing.assert_array_equal(shuffled.gt[order], item.gt[reference])
    sparse = every_nth_laser(item, 4)
    assert 0.2 < sparse.frame.points.shape[0] / n < 0.3 and sparse.frame.ring is None
    grid = organised(item)
    assert grid.frame.layout == (64, 2048) and grid.frame.points.shape[0] == 64 * 2048
    finite = np.isfinite(grid.frame.points[:, :3]).all(axis=1)
    assert 0.85 < finite.sum() / n <= 1.0 and (grid.gt[~finite] == IGNORE).all()
    np.testing.assert_array_equal(grid.frame.ring, np.repeat(np.arange(64), 2048))


def test_organised_cloud_with_nan_returns_gets_superpoints_on_its_finite_points_only(seq08_frame):
    from partlift_ros.testing.sensors import organised

    grid = organised(seq08_frame).frame
    pipe = LabelPipeline(PipelineConfig())
    g = pipe.geometry(grid)
    finite = np.isfinite(grid.points[:, :3]).all(axis=1)
    assert (g.instance[~finite] == IGNORE).all() and (g.instance[finite & g.in_view] >= 0).mean() > 0.95
    # The ring of each row reaches the superpoint stage: the same as the finite points with their rings.
    same = pipe.geometry(grid.subset(finite))
    np.testing.assert_array_equal(g.instance[finite], same.instance)
    assert 250 <= g.num_instances <= 330


def test_previous_release_loader_names_a_bad_revision(tmp_path):
    from partlift_ros.testing.previous import load_previous_release

    with pytest.raises(RuntimeError, match="no-such-revision"):
        load_previous_release(tmp_path, "no-such-revision", alias="partlift_ros_never")

"""Build the embedded demo sequence (partlift_ros/data/demo) from real SemanticKITTI frames.

Keeps the points that project into the left colour image (plus a margin) so the package stays small.
Usage: python scripts/make_demo_data.py ../shared/data/semantickitti-mini/sequences/08 partlift_ros/data/demo
"""

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from partlift_ros.calibration import parse_kitti_calib, project_points

FRAMES = ["000000", "000001"]
MARGIN_PX = 60


def main(src: Path, dst: Path) -> None:
    calib = parse_kitti_calib(src / "calib.txt")
    for sub in ("velodyne", "labels", "image_2"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for name in FRAMES:
        pts = np.fromfile(src / "velodyne" / f"{name}.bin", dtype=np.float32).reshape(-1, 4)
        lab = np.fromfile(src / "labels" / f"{name}.label", dtype=np.uint32)
        w, h = Image.open(src / "image_2" / f"{name}.png").size
        # A virtual image MARGIN_PX larger on every side: shift the principal point and widen the size.
        K = calib.K.copy()
        K[:2, 2] += MARGIN_PX
        keep = project_points(pts, K, calib.T_cam_lidar, (w + 2 * MARGIN_PX, h + 2 * MARGIN_PX)).in_image
        pts[keep].tofile(dst / "velodyne" / f"{name}.bin")
        lab[keep].tofile(dst / "labels" / f"{name}.label")
        shutil.copyfile(src / "image_2" / f"{name}.png", dst / "image_2" / f"{name}.png")
    shutil.copyfile(src / "calib.txt", dst / "calib.txt")
    times = (src / "times.txt").read_text().splitlines()[: len(FRAMES)]
    (dst / "times.txt").write_text("\n".join(times) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""ament_python package that is also pip-installable (``pip install -e .``)."""

from glob import glob

from setuptools import find_namespace_packages, find_packages, setup

PACKAGE = "partlift_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    # The demo data folders are listed as (namespace) packages so setuptools installs their files without
    # warning that an importable folder is missing from `packages`.
    packages=find_packages(exclude=["test", "test.*", "benchmarks"])
    + find_namespace_packages(include=["partlift_ros.data", "partlift_ros.data.*"]),
    package_data={PACKAGE: ["data/demo/*", "data/demo/**/*"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "torch>=2.1",
        "transformers>=4.40",
        "scikit-learn>=1.3",
        "threadpoolctl>=3",  # a labelling job fixes the BLAS/OpenMP thread count (float results depend on it)
        "opencv-contrib-python-headless>=4.8",
        "Pillow>=10",
        "PyYAML>=6",
        "typer>=0.12",
        "rich>=13",
        "rosbags>=0.10",
        # The default CPU crop encoder (clip.backend=auto: ONNX Runtime int8 where it keeps the features).
        "onnxruntime>=1.17",
        "onnx>=1.15",
    ],
    extras_require={
        "test": ["pytest>=8"],
        # `partlift label --workers N` / `--ray-address`: chunks of many bags on a Ray cluster.
        "ray": ["ray[default]>=2.9"],
        # rclpy for machines without a ROS 2 install (a sourced ROS 2 provides these instead).
        "ros-wheels": [
            "ros-rclpy", "ros-rmw-fastrtps-cpp", "ros-sensor-msgs", "ros-std-msgs",
            "ros-geometry-msgs", "ros-visualization-msgs", "ros-diagnostic-msgs",
        ],
        "slic": ["scikit-image>=0.22"],
        # Another CPU crop encoder (clip.backend=openvino; auto takes it after ONNX Runtime int8, see README).
        "openvino": ["openvino>=2024.0"],
        # SAM-refined instances (sam.backend=segment_anything); only its torch-only modules are imported.
        "sam": ["segment-anything>=1.0"],
        # spconv for the CUDA backend of the student (pick the wheel of your CUDA); the CPU wheel is
        # only used by the tests that check it against the torch-native sparse convolution.
        "spconv": ["spconv-cu120"],
        "spconv-cpu": ["spconv==2.3.8"],
    },
    zip_safe=False,
    maintainer="partlift_ros developers",
    maintainer_email="partlift-ros@users.noreply.github.com",
    description="Open-vocabulary LiDAR semantic labelling by lifting CLIP into 3D (Affinity3D) and distilling it into a LiDAR-only student.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "partlift = partlift_ros.cli:main",
            "labeller = partlift_ros.ros.labeller_node:console",
            "student = partlift_ros.ros.student_node:console",
        ],
    },
)

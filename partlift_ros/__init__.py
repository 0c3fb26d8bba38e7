"""partlift_ros: open-vocabulary LiDAR labelling by lifting CLIP from the camera into 3D.

Nothing heavy is imported here; import the submodules you need
(``partlift_ros.pipeline.LabelPipeline`` is the main entry).
"""

__version__ = "0.1.0"

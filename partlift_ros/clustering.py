"""Former home of the superpoint code, now the ``superpoints`` package (one module per idea).

Kept so that ``from partlift_ros.clustering import segment_superpoints`` in user code still works.
"""

from .superpoints import segment_superpoints

__all__ = ["segment_superpoints"]

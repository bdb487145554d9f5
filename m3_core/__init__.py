"""m3_core: the numerical heart of m3-grasp (M3 memory, geometry, features, query).

No ROS import anywhere in this package: it runs from a notebook, the `m3` CLI or a ROS node.
"""

__version__ = "0.1.0"

"""From an object instance to grasps a parallel-jaw gripper can execute (no ROS here)."""

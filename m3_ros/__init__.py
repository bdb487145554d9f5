"""m3_ros: thin rclpy adapters around m3_core (conversions, nodes, the `m3` command line)."""

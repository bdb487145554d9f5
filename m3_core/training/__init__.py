"""Building a memory from a scene: the trainer, densification, losses, evaluation and `m3 train`."""

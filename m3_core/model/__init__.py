"""The M3 memory itself: Gaussians with principal queries, the principal-scene-component bank,
Gaussian memory attention, the distillation baseline and the saved artifact (safetensors + JSON)."""

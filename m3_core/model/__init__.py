"""The M3 memory itself: Gaussians with principal queries, the principal-scene-component bank,
Gaussian memory attention, the linear head (F-3DGS-style decoder, for comparison) and the saved
artifact (safetensors + JSON)."""

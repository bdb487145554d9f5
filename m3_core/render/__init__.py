"""Rendering of Gaussian memories: `rasterize(gaussians, world_from_camera, camera, ...) -> RenderOutput`.

Backends: gsplat (CUDA, imported only when a CUDA tensor is rendered) and a pure-PyTorch one with
the same compositing rules that can render just a set of pixels (CPU training).
"""

from m3_core.render.rasterizer import BACKENDS, RenderOutput, rasterize

__all__ = ["BACKENDS", "RenderOutput", "rasterize"]

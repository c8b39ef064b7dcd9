"""Render stage: windowed renders, thumbnails and tiles from the Zarr pixels (issue 4)."""

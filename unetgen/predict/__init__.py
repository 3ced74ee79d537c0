"""Prediction on images of any size: `tiling` (overlap-tile planning and prediction, blocks,
the memory checks), `arrays` (images and outputs larger than memory) and `distributed` (the
blocks spread over a Dask cluster)."""

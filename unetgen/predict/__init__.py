"""Prediction on images of any size, by what it is made of:

- `plan`: tile plans (`plan_tiles`, `TilePlan`) and the memory checks (`check_memory`);
- `geometry`: per axis, where each tile reads (mirrored context) and writes, and which tiles
  each output block needs;
- `sources` and `sinks`: where tiles are read from and finished blocks written to;
- `journal`: the resume record of completed blocks;
- `run`: `predict_tiled`, and the `prepare`/`run` steps it is made of;
- `options`: the checks of the options, and the output types;
- `formats`: the table of image files by suffix (.npy, .png, .zarr, .tif/.tiff);
- `arrays`: images and outputs larger than memory (`zarr_store`: zarr folders read through
  checks); `distributed`: blocks spread over a Dask cluster;
- `ownership`: what a prediction may write and remove (never its input, never what unetgen did
  not make), one run at a time per output (`output_lock`), exclusive temporaries.
"""

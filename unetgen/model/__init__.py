"""The network: `layers` (convs, norms, activations per spatial dimension), `blocks` (conv
blocks, down- and up-sampling, skip merges), `unet` (`UNet` and its levels) and `optimize`
(inference-time fusion). Building from a config source is `unetgen.build.build_unet`."""

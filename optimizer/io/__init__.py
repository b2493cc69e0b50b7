"""Model folders in and out: checkpoints, safetensors shards, output folders, model cards, packaged data."""

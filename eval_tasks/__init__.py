"""lm-eval task YAMLs with local data, shipped with mergeopt; every study can name them."""

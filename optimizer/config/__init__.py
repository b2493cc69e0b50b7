"""Config files as data: the study file, the merge config, parameter forms."""

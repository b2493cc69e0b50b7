"""mergeopt: configs, model I/O, the merge engine, evaluation, studies and the CLI."""

__version__ = "0.1.0"

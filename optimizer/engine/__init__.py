"""The merge engine: the resident model written per candidate, and one-shot merges."""

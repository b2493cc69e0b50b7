"""Example study files, shipped with mergeopt (``mergeopt demo`` runs demo.yaml)."""

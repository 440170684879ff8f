"""Kedro and MLflow around the model: hooks that check a run, tracking, lineage of the
files, the served model, and the static Kedro-Viz site."""

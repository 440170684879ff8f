"""Training, with no Kedro: the optimisation loop and its checkpoints, the CVAE's
recipe, and its processes under torchrun."""

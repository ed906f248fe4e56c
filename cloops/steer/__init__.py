"""Layer **steer**: steering a build by hand — addressing targets, history and restore, takes,
locks, status, spend reports — and the doit commands for them. The top layer: imports every
layer below, nothing imports it."""

"""Zeroth-order optimisation: seeded in-place perturbations and two-point estimators."""

"""Doing a run's units: the processes, the frozen features and their caches, the episodes, the fits
(alone or stacked) and the scoring of their outputs."""

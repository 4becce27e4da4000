"""Training: the run's configuration and presets, its state, the loop, run files, early stopping,
evaluation and augmentation."""

"""Training: the Lightning module, callbacks and schedules."""

"""The method itself: UFC synthesis, teacher and student training, the distilled instances, the peers."""

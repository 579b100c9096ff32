"""FAD augment stage (installed as fad.augment)."""

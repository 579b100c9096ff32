"""FAD search stage (installed as fad.search)."""

"""Detectors: backbones, FPN, heads and the builder that assembles them from a config."""
from .detector import build_detector

__all__ = ["build_detector"]

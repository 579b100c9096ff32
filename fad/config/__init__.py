"""Configuration: yacs defaults, topic extensions and the dataset catalog."""
from .build import get_cfg_defaults, load_config

__all__ = ["get_cfg_defaults", "load_config"]

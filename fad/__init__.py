"""fad: find and train fast object detectors.

Importing `fad` never needs a compiler or CUDA; compiled ops load lazily on first use.
"""
__version__ = "0.1.0"

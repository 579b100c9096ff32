"""Thin wrapper: `python tools/make_synthetic_data.py --help`; the tool is `fad.cli.make_data`."""
from fad.cli.make_data import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()

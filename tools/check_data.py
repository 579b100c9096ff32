"""Thin wrapper: `python tools/check_data.py --help`; the tool is `fad.cli.check_data`."""
from fad.cli.check_data import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()

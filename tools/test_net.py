"""Thin wrapper: `python tools/test_net.py --help`; the tool is `fad.cli.test`."""
from fad.cli.test import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()

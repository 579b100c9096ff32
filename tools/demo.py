"""Thin wrapper: `python tools/demo.py --help`; the tool is `fad.cli.demo`."""
from fad.cli.demo import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()

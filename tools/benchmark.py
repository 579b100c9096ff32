"""Thin wrapper: `python tools/benchmark.py --help`; the tool is `fad.cli.bench`."""
from fad.cli.bench import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()

"""Thin wrapper: `python tools/search_net.py --help`; the tool is `fad.cli.search`."""
from fad.cli.search import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()

"""Thin wrapper: `python tools/convert_checkpoint.py --help`; the tool is `fad.cli.convert`."""
from fad.cli.convert import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()

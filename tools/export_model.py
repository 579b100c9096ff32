"""Thin wrapper: `python tools/export_model.py --help`; the tool is `fad.cli.export`."""
from fad.cli.export import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()

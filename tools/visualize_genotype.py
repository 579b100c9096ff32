"""Thin wrapper: `python tools/visualize_genotype.py --help`; the tool is `fad.cli.visualize`."""
from fad.cli.visualize import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()

"""Thin wrapper: `python tools/train_net.py --help`; the tool is `fad.cli.train`."""
from fad.cli.train import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()

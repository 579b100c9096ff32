"""Thin wrapper: `python tools/eval_detections.py --help`; the tool is `fad.cli.evaluate`."""
from fad.cli.evaluate import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()

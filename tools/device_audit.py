"""Thin wrapper: `python tools/device_audit.py --help`; the tool is `fad.cli.device_audit`."""
from fad.cli.device_audit import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()

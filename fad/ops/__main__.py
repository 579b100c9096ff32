"""`python -m fad.ops [NAME ...]`: build (or load) the compiled kernels now, the named extensions
or every CPU one, so that no tool waits for a JIT build later; one line each, `NAME: ready` or
`NAME: unavailable (why)` (the tools then fall back to PyTorch's ops and say so)."""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from fad.ops.build import EXTENSIONS, load_error


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv` (default: sys.argv[1:]) and build each extension it names."""
    parser = argparse.ArgumentParser(prog="python -m fad.ops", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help="extensions to build "
                        f"(default: the CPU ones): {', '.join(EXTENSIONS)}")
    names = parser.parse_args(argv).names or [n for n, e in EXTENSIONS.items() if not e.cuda]
    unknown = [n for n in names if n not in EXTENSIONS]
    if unknown:
        parser.error(f"no extension {', '.join(unknown)}; choose from {', '.join(EXTENSIONS)}")
    for name in names:
        reason = load_error(name)
        print(f"{name}: " + ("ready" if reason is None else f"unavailable ({reason})"), flush=True)


if __name__ == "__main__":
    main()

"""supervisor-crashmail (not built yet)."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    sys.stderr.write("supervisor-crashmail: not built yet\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``gateway`` command's first step, before any heavy import.

``gateway serve`` reloads on SIGHUP, whose default action ends a process. Importing the
gateway (quart, hypercorn, pydantic, ...) takes about a second, and a SIGHUP in that second
(a reload sent right after a restart) would end the gateway silently with status 129. So
the signal is ignored here, first thing, until the reload handler takes over.
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    if _subcommand(sys.argv[1:]) == "serve":
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from ._cli import main as cli_main

    return cli_main()


def _subcommand(argv: list[str]) -> str | None:
    """The first argument that is not an option (``gateway [--version] COMMAND ...``)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)

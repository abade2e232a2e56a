"""User-facing errors: one line that names the file and the fix, no deep traceback.

Part of the bottom layer: imports nothing of the project's and no torch, so every package (models/
included) and every script's --help can use it.
"""
import sys

__all__ = ["UserError", "first_few", "run_cli", "user_message"]
SHOWN = 5


def first_few(items, limit=SHOWN):
    """The first ``limit`` items (as str) joined by ', ', then '(+k more)' for the rest: a list that keeps
    a one-line message one line."""
    items = [str(item) for item in items]
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


class UserError(Exception):
    """An error caused by the user's input (a path, a file, an option); printed as one line."""


def user_message(err):
    """The one-line message of a UserError, also when a DataLoader worker re-raised it with its traceback."""
    text = str(err)
    marker = "UserError: "
    if "DataLoader worker" in text and marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.strip().splitlines()[-1] if text.strip() else type(err).__name__


def run_cli(main, argv=None):
    """Run a script's ``main(argv)``; a ``UserError`` becomes ``error: ...`` on stderr and exit code 2."""
    try:
        return main(argv)
    except UserError as err:
        print(f"error: {user_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None

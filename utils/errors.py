"""User-facing errors: one line that names the file and the fix, no deep traceback."""
import sys


class UserError(Exception):
    """An error caused by the user's input (a path, a file, an option); printed as one line."""


def run_cli(main, argv=None):
    """Run a script's ``main(argv)``; a ``UserError`` becomes ``error: ...`` on stderr and exit code 2."""
    try:
        return main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

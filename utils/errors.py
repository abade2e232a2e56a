"""User-facing errors: one line that names the file and the fix, no deep traceback."""
import sys

# Defined in models/ so that the network package needs nothing from utils/.
from models.errors import UserError

__all__ = ["UserError", "user_message", "run_cli"]


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

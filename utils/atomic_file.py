"""Writing a file so that it is never seen half-written: a temporary file beside it, then a rename."""
import contextlib
import os
import re
import uuid
from pathlib import Path

from utils.errors import UserError

# The temporary name: .<final name>.<pid of the writer>.<8 hex digits>.tmp
TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


@contextlib.contextmanager
def atomic_output(path, what, fix="free disk space or choose another path"):
    """Yield a temporary path beside ``path`` to write to; when the block ends, flush it to disk and rename it
    to ``path``. A crash or an exception leaves ``path`` as it was and removes the temporary file; an
    ``OSError`` (a full disk) becomes a ``UserError``: "``path``: cannot write ``what`` (reason); ``fix``".
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise UserError(f"{path}: cannot write {what} ({err.strerror or err}); {fix}") from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder):
    """Make the rename itself durable (POSIX); platforms without directory fsync skip it."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""One rule for every file the project writes: it never replaces a file that it did not write for the same
purpose, and it checks every output path before any work starts.

How the project knows its own files: each folder it writes into holds a manifest, ``.hybrimamba-outputs``,
with one JSON line per file written there: its name, its purpose (e.g. 'results table') and the sha256 of
its bytes. An existing file may be replaced only when the manifest records its current bytes under the
same purpose (so a rerun replaces its own outputs); a file the user made, one written for another purpose,
or one changed since is replaced only with ``--overwrite``. Writing goes through a temporary file beside
the target, renamed into place, so no output is ever half-written.

Checked before any work: the output is not a folder (or, for a folder, not a file), no part of its path
is a file, its folder can be written in, it is neither an input nor inside an input folder (and an output
folder does not hold an input folder either).
"""
import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from utils.atomic_file import TEMP_NAME, atomic_output
from utils.errors import UserError, first_few

log = logging.getLogger("hybrimamba")
MANIFEST = ".hybrimamba-outputs"
KEPT = 2  # records kept per file name when a manifest is compacted: a kill between record and rename


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_records(folder):
    """{file name: [(purpose, sha256), ...]} from ``folder``'s manifest, oldest first; lines that do not
    parse (a kill mid-append) are skipped."""
    try:
        text = (Path(folder) / MANIFEST).read_text(errors="replace")
    except OSError:
        return {}
    records = {}
    for line in text.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = json.loads(line)
            if all(isinstance(entry[k], str) for k in ("name", "purpose", "sha256")):
                records.setdefault(entry["name"], []).append((entry["purpose"], entry["sha256"]))
    return records


def written_for(path, purpose, records=None):
    """Whether the project wrote ``path``'s current bytes for ``purpose`` (``records``: its folder's
    ``manifest_records``, when already read)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    entries = manifest_records(path.parent) if records is None else records
    entries = [sha for p, sha in entries.get(path.name, ()) if p == purpose]
    return bool(entries) and file_sha256(path) in entries


def record_output(path, purpose, sha256=None):
    """Add ``path`` (its bytes, or ``sha256`` of the bytes about to be renamed to it) to its folder's
    manifest as written for ``purpose``. One short append, so concurrent writers do not mix lines; it
    begins with a newline, so that a line a kill left unfinished does not swallow it."""
    path = Path(path)
    line = "\n" + json.dumps({"name": path.name, "purpose": purpose, "sha256": sha256 or file_sha256(path)})
    fd = os.open(path.parent / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def compact_manifest(folder):
    """Rewrite ``folder``'s manifest with the last ``KEPT`` records of each file still there, when it has
    grown beyond that (reruns append)."""
    folder = Path(folder)
    records = manifest_records(folder)
    lines = sum(len(entries) for entries in records.values())
    kept = {name: entries[-KEPT:] for name, entries in records.items() if (folder / name).is_file()}
    if lines <= 2 * sum(len(entries) for entries in kept.values()) + 16:
        return
    # another process appending meanwhile loses its lines: at worst, a later run asks for --overwrite
    text = "".join("\n" + json.dumps({"name": name, "purpose": p, "sha256": sha})
                   for name, entries in kept.items() for p, sha in entries)
    with contextlib.suppress(UserError), atomic_output(folder / MANIFEST, "the manifest") as tmp:
        Path(tmp).write_bytes(text.encode())  # an old manifest only costs space: a failure is ignored


def write_output(path, data, purpose, fix="free disk space or choose another output folder"):
    """Write the bytes ``data`` to ``path`` (folders created) through a temporary file renamed into place,
    recorded as written for ``purpose``; a failure (a full disk) leaves no temporary file and raises
    ``UserError``: "``path``: cannot write the file (reason); ``fix``"."""
    path = Path(path)
    with atomic_output(path, "the file", fix) as tmp, Path(tmp).open("xb") as f:
        f.write(data)
        f.flush()
        # recorded before the rename: a kill between the two leaves the earlier, recorded file in place
        record_output(path, purpose, hashlib.sha256(data).hexdigest())


def remove_interrupted_writes(folder):
    """Delete the temporary files that writers killed mid-write left in ``folder`` (their process is gone);
    returns how many."""
    removed = 0
    with contextlib.suppress(OSError):
        for path in Path(folder).glob(".*.tmp"):
            found = TEMP_NAME.fullmatch(path.name)
            if found and path.is_file() and not path.is_symlink() and not _alive(int(found["pid"])):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
    return removed


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def check_writable_folder(flag, folder, shown=None):
    """Files can be created in ``folder`` (or, while it does not exist, in its nearest existing parent,
    which must be a folder all the way); else ``UserError`` naming ``flag`` and ``shown`` (the path typed)."""
    shown = folder if shown is None else shown
    existing = Path(folder)
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {shown}: {existing} is a file, so nothing can be created inside it; choose another "
                        f"path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".hybrimamba-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{flag} {shown}: cannot write in {existing} ({err.strerror or err}); choose a folder you "
                        f"can write to") from None


def _inputs(inputs):
    """(flag, path, resolved path) of ``inputs``: ``{flag: path}`` or (flag, path) pairs; None paths skipped."""
    pairs = inputs.items() if isinstance(inputs, dict) else inputs or ()
    return [(flag, Path(path), Path(path).resolve()) for flag, path in pairs if path is not None]


def check_output_folder(flag, folder, inputs=None, purpose=None, names=(), overwrite=False):
    """``folder`` (given as ``flag``) must be a folder that can be written in and must not be, contain or
    lie inside a folder of ``inputs`` (``{flag: path}`` or (flag, path) pairs; None paths skipped); the
    files ``names`` the run will write there must be ``purpose`` outputs of the project, or ``overwrite``
    be given. Raises ``UserError``; nothing is written (but a probe file, removed at once). Then, with
    ``names``, the temporary files of a killed earlier write there are removed, with a notice."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder}: is a file, not a folder; choose a folder for the outputs")
    out = folder.resolve()
    for input_flag, source, src in _inputs(inputs):
        relation = "is" if out == src else "is inside" if src in out.parents else "contains" if out in src.parents \
            else None
        if relation:
            raise UserError(f"{flag} {folder} {relation} the input folder {input_flag} {source}; choose a separate "
                            f"output folder so that no input is overwritten")
    check_writable_folder(flag, folder)
    if names:
        check_replaceable(flag, folder, [folder / name for name in names], purpose, overwrite)
        removed = remove_interrupted_writes(folder)
        if removed:
            log.warning(f"notice: removed {removed} temporary file(s) of an interrupted write from {folder}")


def check_output_file(flag, path, purpose, inputs=None, overwrite=False):
    """The file ``path`` (given as ``flag``) may be written for ``purpose``: it is not a folder, its folder
    can be written in, it is neither an input of ``inputs`` (``{flag: path}``) nor inside an input folder,
    and it does not exist or is the project's ``purpose`` output (or ``overwrite``). Raises ``UserError``."""
    path = Path(path)
    out = path.resolve()
    for input_flag, source, src in _inputs(inputs):
        if out == src:
            raise UserError(f"{flag} {path}: is the input {input_flag} {source}; choose another path")
        if src in out.parents:
            raise UserError(f"{flag} {path}: lies inside the input folder {input_flag} {source}; choose a path "
                            f"outside the inputs")
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; name the file to write")
    check_writable_folder(flag, path.parent, shown=path)
    check_replaceable(flag, path, [path], purpose, overwrite)


def check_replaceable(flag, shown, paths, purpose, overwrite=False):
    """Every existing path of ``paths`` is a file the project wrote for ``purpose``, or ``overwrite``;
    else ``UserError`` naming ``flag`` ``shown`` (the path typed) and the first few files."""
    records, blocked = {}, []
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            raise UserError(f"{flag} {shown}: {path} is a folder; remove or rename it")
        if not (path.exists() or path.is_symlink()) or overwrite:
            continue
        if path.parent not in records:
            compact_manifest(path.parent)
            records[path.parent] = manifest_records(path.parent)
        if not written_for(path, purpose, records[path.parent]):
            blocked.append(path)
    if len(blocked) == 1 and blocked[0] == Path(shown):
        raise UserError(f"{flag} {shown}: exists and is not a file HybriMamba wrote for this purpose ({purpose}), or "
                        f"was changed since; pass --overwrite to replace it, or choose another path")
    if blocked:
        raise UserError(f"{flag} {shown}: {len(blocked)} file(s) there are not files HybriMamba wrote for this "
                        f"purpose ({purpose}), or were changed since: {first_few(p.name for p in blocked)}; pass "
                        f"--overwrite to replace them, or choose another folder")


def check_distinct(outputs):
    """The output folders or files ``{flag: path}`` (None values skipped) are different paths."""
    seen = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise UserError(f"{seen[key][0]} {seen[key][1]} and {flag} {path} are the same path; give each its own")
        seen[key] = (flag, path)

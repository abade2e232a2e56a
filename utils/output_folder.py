"""Output folders that cannot overwrite what a script reads: checked before anything is written."""
from pathlib import Path

from utils.errors import UserError


def check_output_folder(flag, folder, inputs):
    """``folder`` (given as ``flag``) must not be a file, nor be, contain or lie inside a folder of
    ``inputs`` (``{flag: folder}``; None values are skipped); raises ``UserError`` otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder}: is a file, not a folder; choose a folder for the outputs")
    out = folder.resolve()
    for input_flag, source in inputs.items():
        if source is None:
            continue
        src = Path(source).resolve()
        relation = "is" if out == src else "is inside" if src in out.parents else "contains" if out in src.parents \
            else None
        if relation:
            raise UserError(f"{flag} {folder} {relation} the input folder {input_flag} {source}; choose a separate "
                            f"output folder so that no input is overwritten")

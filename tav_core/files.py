"""One policy for the files the pack reads and writes.

Reading: a name chosen in ComfyUI (from the browser or a shared workflow) resolves to a real path
inside the folder it was picked from; absolute names, `..`, NUL bytes and symlinks that lead outside
are refused. A folder that is itself a symlink (models/ on another disk) is fine: it is the real
path of the folder that counts. Load Video and Load Tuned Weights use the same rule.

Writing: a temporary file in the target folder, renamed into place, so a reader never sees half a
file and a failed write leaves nothing behind; mode 0644 (less the umask), as ComfyUI's outputs.
"""
from __future__ import annotations

import os
import uuid


class OutsideError(ValueError):
    """A name leads outside the folder it was chosen from."""


def resolve_inside(name, base: str) -> str:
    """The real path of `name` relative to the folder `base`; OutsideError if it is not inside."""
    if not isinstance(name, str) or not name or "\0" in name or os.path.isabs(name):
        raise OutsideError(name)
    root = os.path.realpath(base)
    resolved = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, resolved]) != root:
        raise OutsideError(name)
    return resolved


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask  # what open() gives a new file; safetensors' writer makes 0600 files


def write_atomic(path: str, write) -> None:
    """`write(temporary_path)` then rename it to `path`; the temporary file is removed on failure."""
    partial = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{uuid.uuid4().hex}.partial")
    try:
        write(partial)
        os.chmod(partial, _file_mode())
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        try:
            os.remove(partial)
        except OSError:
            pass
        raise

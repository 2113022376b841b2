"""Replace a file so that readers and a crash only ever see the old content or the new, never a mix.

The recipe: a temp file in the same directory (rename is atomic only within one file system),
created exclusively with its final mode, written in full, fsynced, renamed over the target, then
the directory fsynced so the rename itself survives a power cut. A writer killed at any point
leaves the target untouched and at worst a stray temp file, which `is_temp_name` recognises so
that the owner of the directory can ignore and remove it.
"""

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import List, Union

PathLike = Union[str, os.PathLike]

# ".<target name>.tmp-<random>": hidden, and never mistaken for a target by a name pattern that
# anchors on the start of the name (e.g. "snapshot-*.json").
_TEMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")

# Large payloads go out in pieces: os.write may write less than asked, and bounded pieces keep a
# single call from holding a huge slice copy.
_CHUNK = 1 << 20


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of write_atomic's temp files."""
    return _TEMP_RE.match(name) is not None


def temp_files(directory: PathLike) -> List[Path]:
    """write_atomic temp files in a directory: stray ones left by a killed writer, or one a
    writer is filling right now (only the caller knows which, e.g. by holding a lock)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(Path(directory, n) for n in names if is_temp_name(n))


def fsync_dir(directory: PathLike) -> None:
    """Make the entries of a directory (a create, a rename, an unlink) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: PathLike, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`, atomically and durably, the file getting permission `mode`.

    On any error the temp file is removed, the target is left as it was, and the error is
    re-raised. An error from the final directory fsync comes after the rename: the new content is
    in place then but its durability is not assured, which the caller learns from the exception.
    """
    target = Path(os.fspath(path))
    directory = target.parent
    fd = -1
    tmp = None
    # A clash of 48 random bits with another writer's temp is next to impossible; O_EXCL makes
    # it harmless anyway, and a few retries make it invisible.
    for _ in range(8):
        candidate = directory / f".{target.name}.tmp-{secrets.token_hex(6)}"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
        tmp = candidate
        break
    else:
        raise FileExistsError(f"no free temp name for {target} in {directory}")

    renamed = False
    try:
        # The umask can only have taken bits away: the file was never more open than `mode`.
        # Give the missing bits back before any data is in it, so the caller's mode is exact.
        if os.fstat(fd).st_mode & 0o7777 != mode:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view[:_CHUNK])
            view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
        renamed = True
        fsync_dir(directory)
    except BaseException:
        # BaseException too: a KeyboardInterrupt must not leave the temp file behind either.
        if fd >= 0:
            os.close(fd)
        if not renamed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise

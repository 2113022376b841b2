"""Reading and writing files that someone else may have swapped for something else.

Every file lvs-hooks reads goes through `read_file` (or `open_regular` for a reader that streams):
opened non-blocking, so that a FIFO put where a config or snapshot belongs cannot hang the
command; checked to be a regular file (fstat, on what was opened, not on the name); read up to a
cap, so that /dev/zero or a runaway file cannot exhaust memory. /proc files say their size is 0:
`read_proc` caps the bytes read instead of trusting the size.

Every file lvs-hooks writes in place (a lock, an append-only journal) goes through `open_write`:
never through a symbolic link at its name (O_NOFOLLOW), never anything but a regular file, its
mode given explicitly and set whatever the umask. Replacements go through atomicfile, which
creates its temp file exclusively (O_EXCL does not follow links either).

Problems raise `Refused`, an OSError whose strerror says what is wrong and whose filename is
the path: callers that already report `e.strerror` for an OSError name both, never the content.
Stdlib only: the door uses it.
"""

import errno
import os
import stat
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]

# O_NONBLOCK: opening a FIFO for reading blocks until a writer comes; with it, open returns at
# once (and a read finds nothing). O_NOCTTY: a terminal device must not become ours.
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_CHUNK = 1 << 20


class Refused(OSError):
    """A file that is not what it should be (not a regular file, too large, a symbolic link):
    strerror says what, filename names it."""

    def __init__(self, path: str, problem: str, code: int = errno.EINVAL):
        super().__init__(code, problem, os.fspath(path))


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _size_text(limit: int) -> str:
    if limit >= 1 << 20 and limit % (1 << 20) == 0:
        return f"{limit >> 20} MiB"
    if limit >= 1 << 10 and limit % (1 << 10) == 0:
        return f"{limit >> 10} KiB"
    return f"{limit} bytes"


def open_regular(path: PathLike, nofollow: bool = False) -> int:
    """A read-only descriptor on `path`, which must be a regular file; Refused otherwise, and
    OSError (FileNotFoundError, PermissionError ...) as os.open raises it. The descriptor is
    back in blocking mode, for readers that stream it."""
    flags = _READ_FLAGS | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and nofollow:
            raise Refused(os.fspath(path), "is a symbolic link", errno.ELOOP) from None
        raise
    return _regular(fd, path)


def _regular(fd: int, path: PathLike) -> int:
    """`fd` if it is a regular file (made blocking again: it was opened non-blocking so that
    a FIFO planted there could not hang the open), else closed and Refused."""
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Refused(os.fspath(path), f"is {_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fd(fd: int, path: PathLike, limit: int) -> bytes:
    """Up to `limit` bytes from `fd`; Refused when there are more (the file named `path`)."""
    parts = []
    total = 0
    while True:
        chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        if total > limit:
            raise Refused(os.fspath(path), f"larger than {_size_text(limit)}", errno.EFBIG)
    return b"".join(parts)


def read_file(path: PathLike, limit: int, nofollow: bool = False) -> bytes:
    """The whole of regular file `path`, at most `limit` bytes (Refused beyond: not truncated,
    a cut-off file is no file)."""
    fd = open_regular(path, nofollow)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise Refused(os.fspath(path), f"larger than {_size_text(limit)}", errno.EFBIG)
        return read_fd(fd, path, limit)
    finally:
        os.close(fd)


def read_proc(path: PathLike, limit: int = 1 << 16) -> bytes:
    """A small /proc or /sys file (a sysctl, a pid's stat, boot_id): regular (procfs says so),
    sized 0 whatever it holds, so the cap is on the bytes read."""
    fd = open_regular(path)
    try:
        return read_fd(fd, path, limit)
    finally:
        os.close(fd)


def check_writable(path: PathLike) -> None:
    """Refused now if open_write would refuse `path` (a link, anything but a regular file of
    ours with one link); nothing is created or changed. For a command that must refuse before
    it does anything, rather than half way (open_write still checks on the descriptor)."""
    try:
        st = os.lstat(path)
    except OSError:
        return  # missing, or its directory is not one: the write itself will say so
    if stat.S_ISLNK(st.st_mode):
        raise Refused(os.fspath(path), "is a symbolic link", errno.ELOOP)
    _check_ours(path, st)


def _check_ours(path: PathLike, st: os.stat_result) -> None:
    """Refused unless `st` is a regular file of this user's with one link: a hard link planted
    at the name would have us write to (and chmod) its target, and a file of another owner is
    not ours to bring to our mode."""
    if not stat.S_ISREG(st.st_mode):
        raise Refused(os.fspath(path), f"is {_kind(st.st_mode)}, not a regular file")
    if st.st_nlink != 1:
        raise Refused(os.fspath(path), f"has {st.st_nlink} hard links, expected 1")
    if st.st_uid != os.geteuid():
        raise Refused(os.fspath(path), f"is owned by uid {st.st_uid}", errno.EPERM)


def _open_for_write(path: PathLike, flags: int, mode: int = 0o600) -> int:
    """os.open with O_NOFOLLOW and O_NONBLOCK among `flags`, its refusals said as Refused."""
    try:
        return os.open(path, flags, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Refused(os.fspath(path), "is a symbolic link", errno.ELOOP) from None
        if e.errno == errno.ENXIO:  # a FIFO nobody reads, opened for writing non-blocking
            raise Refused(os.fspath(path), "is a FIFO, not a regular file") from None
        if e.errno == errno.EISDIR:
            raise Refused(os.fspath(path), "is a directory, not a regular file") from None
        raise


def open_existing(path: PathLike) -> int:
    """A write descriptor on an existing regular file that only the kernel creates (a sysctl
    under /proc/sys): no link followed, nothing created, truncated or chmodded."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    return _regular(_open_for_write(path, flags), path)


def open_write(
    path: PathLike, mode: int, append: bool = False, create: bool = True, readable: bool = False
) -> int:
    """A write descriptor on regular file `path` that never follows a symbolic link at its name
    and never truncates: created with exactly `mode` (whatever the umask), or an existing file
    brought to `mode` only once it is known to be a regular file of ours with one link. Refused
    for a symbolic link, a hard link, another owner's file or anything but a regular file."""
    flags = (os.O_RDWR if readable else os.O_WRONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_NONBLOCK | os.O_NOCTTY
    if create:
        flags |= os.O_CREAT
    if append:
        flags |= os.O_APPEND
    fd = _open_for_write(path, flags, mode)
    try:
        st = os.fstat(fd)
        _check_ours(path, st)
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd

"""write_atomic: the old content or the new, never a mix, and no temp file left behind."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lvs_hooks import atomicfile
from lvs_hooks.atomicfile import is_temp_name, temp_files, write_atomic

REPO = Path(__file__).resolve().parents[2]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_content_with_mode_0600_and_leaves_no_temp(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, b"hello\n")
    assert target.read_bytes() == b"hello\n"
    assert mode_of(target) == 0o600
    assert os.listdir(tmp_path) == ["state.json"]


def test_large_content_is_written_whole(tmp_path):
    # Bigger than one write chunk, not a multiple of it.
    data = os.urandom(3 * (1 << 20) + 12345)
    target = tmp_path / "big"
    write_atomic(target, data)
    assert target.read_bytes() == data


def test_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "shared", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "shared") == 0o644


def test_replacing_gives_a_new_file_not_an_in_place_write(tmp_path):
    target = tmp_path / "state"
    target.write_bytes(b"old")
    target.chmod(0o644)
    with open(target, "rb") as reader:
        write_atomic(target, b"new")
        # A reader that opened the old file keeps seeing it whole: it was replaced, not rewritten.
        assert reader.read() == b"old"
    assert target.read_bytes() == b"new"
    assert mode_of(target) == 0o600  # the mode asked for, not the old file's
    assert temp_files(tmp_path) == []


def test_failed_write_leaves_old_file_intact_and_no_temp(tmp_path):
    # A real write failure: a file size limit makes write(2) fail with EFBIG mid-file.
    target = tmp_path / "state"
    target.write_bytes(b"old content")
    child = f"""
import errno, resource, signal, sys
sys.path.insert(0, {str(REPO)!r})
from lvs_hooks.atomicfile import write_atomic
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
try:
    write_atomic({str(target)!r}, b"n" * (4 << 20))
except OSError as e:
    sys.exit(10 if e.errno == errno.EFBIG else 11)
sys.exit(0)
"""
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert result.returncode == 10, result.stderr.decode()
    assert target.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["state"]


def test_failed_rename_removes_the_temp(tmp_path):
    target = tmp_path / "state"
    target.mkdir()  # rename(2) of a file over a directory fails
    with pytest.raises(IsADirectoryError):
        write_atomic(target, b"data")
    assert os.listdir(tmp_path) == ["state"]
    assert target.is_dir()


def test_interrupt_during_write_removes_the_temp(tmp_path, monkeypatch):
    target = tmp_path / "state"
    target.write_bytes(b"old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomicfile.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state"]


def test_missing_directory_is_an_error_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "absent" / "state", b"x")
    assert os.listdir(tmp_path) == []


def test_temp_names_are_recognised(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        return real_replace(src, dst)

    monkeypatch.setattr(atomicfile.os, "replace", spy)
    write_atomic(tmp_path / "snapshot-x.json", b"x")
    monkeypatch.undo()
    assert len(seen) == 1 and is_temp_name(seen[0]), seen
    assert seen[0].startswith(".snapshot-x.json.tmp-")
    assert not is_temp_name("snapshot-x.json")
    assert not is_temp_name(".snapshot-x.json.tmp-")
    assert not is_temp_name("x.tmp-0123456789ab")


def test_temp_files_lists_strays_only(tmp_path):
    (tmp_path / ".state.tmp-0123456789ab").write_bytes(b"half")
    (tmp_path / "state").write_bytes(b"whole")
    assert temp_files(tmp_path) == [tmp_path / ".state.tmp-0123456789ab"]
    assert temp_files(tmp_path / "absent") == []

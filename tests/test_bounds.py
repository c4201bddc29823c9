"""bounds.read_bounded: the one bounded file read behind --file and %ollama load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ollama_magic.bounds import NotRegularFile, read_bounded


@pytest.mark.parametrize("head", [True, False])
def test_a_file_up_to_the_limit_is_read_whole(tmp_path, head):
    path = tmp_path / "f.txt"
    for size in (0, 9, 10):
        path.write_bytes(b"x" * size)
        assert read_bounded(path, 10, head=head) == (b"x" * size, size)


def test_an_oversize_file_gives_its_first_limit_plus_one_bytes_and_its_size(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"0123456789" * 100)
    raw, size = read_bounded(path, 10)
    assert raw == b"01234567890" and size == 1000  # one byte over says "cut"; the size says how much
    assert read_bounded(path, 10, head=False) == (b"", 1000)  # not read at all
    assert read_bounded(path, 11) == (b"012345678901", 1000)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux /proc")
def test_a_file_larger_than_stat_says_is_still_bounded_and_seen_as_over():
    # /proc files say size 0 and then give more, as a file that grows while it is read.
    path = Path("/proc/self/status")
    assert path.stat().st_size == 0
    raw, size = read_bounded(path, 16)
    assert len(raw) == 17 and size == 17  # over the limit although stat said 0
    raw, size = read_bounded(path, 16, head=False)  # stat said nothing is over: read, and found over
    assert len(raw) == 17 and size == 17


def test_folders_fifos_and_devices_are_refused_before_any_read(tmp_path):
    with pytest.raises(IsADirectoryError):
        read_bounded(tmp_path, 10)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # opening it to read would block until a writer came
    with pytest.raises(NotRegularFile):
        read_bounded(fifo, 10)
    with pytest.raises(NotRegularFile):
        read_bounded(Path("/dev/zero"), 10)  # would never end
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "missing", 10)


def test_unreadable_files_raise_what_reading_raises(tmp_path):
    if os.geteuid() != 0:  # chmod 000 does not stop root
        path = tmp_path / "locked.txt"
        path.write_bytes(b"secret")
        path.chmod(0)
        try:
            with pytest.raises(PermissionError):
                read_bounded(path, 10)
        finally:
            path.chmod(0o600)
    mem = Path("/proc/self/mem")
    if mem.is_file():  # a regular file whose read fails (EIO at offset 0), for root too
        with pytest.raises(OSError) as info:
            read_bounded(mem, 10)
        assert not isinstance(info.value, (NotRegularFile, IsADirectoryError))

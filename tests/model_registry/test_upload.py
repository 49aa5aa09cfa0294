"""The declared-digest upload's spool follower: what the store's reader sees of a growing file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from model_registry.upload import _Refused, _SpoolFollower

MiB = 1 << 20
PART = 5 * MiB


def _writer(path: Path, follower: _SpoolFollower, chunks: list[bytes]) -> threading.Thread:
    def write() -> None:
        with open(path, "ab") as out:
            for chunk in chunks:
                out.write(chunk)
                out.flush()
                follower.wrote(len(chunk))
        follower.end()

    return threading.Thread(target=write)


def test_the_store_reads_whole_parts_as_the_body_arrives(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.touch()
    follower = _SpoolFollower(path)
    chunks = [bytes([i]) * MiB for i in range(12)]  # two whole parts and a 2 MiB rest
    writer = _writer(path, follower, chunks)
    writer.start()
    reads = [follower.read(PART), follower.read(PART), follower.read(PART)]
    writer.join()
    # A part is one read, never a chunk at a time: the store appends reads into its part.
    assert [len(r) for r in reads] == [PART, PART, 2 * MiB]
    assert b"".join(reads) == b"".join(chunks)
    # The end is held back until the upload is approved; then the store may finish.
    ended: list[bytes] = []
    last = threading.Thread(target=lambda: ended.append(follower.read(PART)))
    last.start()
    last.join(0.05)
    assert last.is_alive() and not ended
    follower.decide(True)
    last.join(5)
    assert ended == [b""]
    follower.close()


def test_a_refusal_abandons_the_store_write(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.touch()
    follower = _SpoolFollower(path)
    writer = _writer(path, follower, [b"x" * MiB])
    writer.start()
    writer.join()
    assert follower.read(PART) == b"x" * MiB
    follower.decide(False)
    with pytest.raises(_Refused):
        follower.read(PART)
    follower.close()


def test_a_body_of_known_length_hands_over_its_last_byte_only_once_approved(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool"
    path.touch()
    total = 7 * MiB
    follower = _SpoolFollower(path, total)
    writer = _writer(path, follower, [b"a" * MiB] * 7)
    writer.start()
    # A store that knows the length reads exact parts and never asks for an end: the read of
    # the last part is what must wait for the approval.
    assert len(follower.read(PART)) == PART
    last: list[bytes] = []
    reader = threading.Thread(target=lambda: last.append(follower.read(total - PART)))
    reader.start()
    writer.join()
    reader.join(0.05)
    assert reader.is_alive() and not last
    follower.decide(True)
    reader.join(5)
    assert last == [b"a" * (total - PART)]
    follower.close()


def test_a_body_short_of_its_length_is_never_handed_over_whole(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.touch()
    follower = _SpoolFollower(path, 3 * MiB)
    writer = _writer(path, follower, [b"a" * MiB] * 2)
    writer.start()
    writer.join()
    # What arrived is handed over (it does not complete the body); the store then waits for
    # more, and the refusal of the incomplete upload abandons its write.
    assert follower.read(3 * MiB) == b"a" * 2 * MiB
    follower.decide(False)
    with pytest.raises(_Refused):
        follower.read(MiB)
    follower.close()

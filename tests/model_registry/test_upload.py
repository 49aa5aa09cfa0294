"""The upload pipeline's parts: the body relay to the store, and the spool for the inspection."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import pytest

from model_registry.inspection import BulkRanges
from model_registry.upload import RELAY_BYTES_MAX, _BodyRelay, _Refused, spool_stream
from tests import onnx_models as builders
from tests.model_registry.streams import Trickle

MiB = 1 << 20
PART = 5 * MiB


def _writer(relay: _BodyRelay, chunks: list[bytes]) -> threading.Thread:
    def write() -> None:
        for chunk in chunks:
            relay.put(chunk)
        relay.end()

    return threading.Thread(target=write)


def test_the_store_reads_whole_parts_as_the_body_arrives() -> None:
    relay = _BodyRelay()
    chunks = [bytes([i]) * MiB for i in range(12)]  # two whole parts and a 2 MiB rest
    writer = _writer(relay, chunks)
    writer.start()
    reads = [relay.read(PART), relay.read(PART), relay.read(PART)]
    writer.join()
    # A part is one read, never a chunk at a time: the store appends reads into its part.
    assert [len(r) for r in reads] == [PART, PART, 2 * MiB]
    assert b"".join(reads) == b"".join(chunks)
    # The end is held back until the upload is approved; then the store may finish.
    ended: list[bytes] = []
    last = threading.Thread(target=lambda: ended.append(relay.read(PART)))
    last.start()
    last.join(0.05)
    assert last.is_alive() and not ended
    relay.decide(True)
    last.join(5)
    assert ended == [b""]


def test_a_slow_store_slows_the_body_down_instead_of_filling_memory() -> None:
    relay = _BodyRelay()
    writer = _writer(relay, [b"x" * MiB] * 32)
    writer.start()
    writer.join(0.2)
    assert writer.is_alive()  # held back: nothing read yet
    assert relay._held <= RELAY_BYTES_MAX
    got = 0
    while got < 32 * MiB:
        got += len(relay.read(PART))
    writer.join(5)
    assert not writer.is_alive()


def test_a_refusal_abandons_the_store_write() -> None:
    relay = _BodyRelay()
    writer = _writer(relay, [b"x" * MiB])
    writer.start()
    writer.join()
    assert relay.read(PART) == b"x" * MiB
    relay.decide(False)
    with pytest.raises(_Refused):
        relay.read(PART)


def test_a_failed_store_write_lets_the_body_go_on() -> None:
    relay = _BodyRelay()
    relay.store_done()  # the store gave up: the request still reads its body to the end
    writer = _writer(relay, [b"x" * MiB] * 32)
    writer.start()
    writer.join(5)
    assert not writer.is_alive()
    assert relay._held == 0


def test_a_body_of_known_length_hands_over_its_last_byte_only_once_approved() -> None:
    total = 7 * MiB
    relay = _BodyRelay(total)
    writer = _writer(relay, [b"a" * MiB] * 7)
    writer.start()
    # A store that knows the length reads exact parts and never asks for an end: the read of
    # the last part is what must wait for the approval.
    assert len(relay.read(PART)) == PART
    last: list[bytes] = []
    reader = threading.Thread(target=lambda: last.append(relay.read(total - PART)))
    reader.start()
    writer.join()
    reader.join(0.05)
    assert reader.is_alive() and not last
    relay.decide(True)
    reader.join(5)
    assert last == [b"a" * (total - PART)]


def test_a_body_short_of_its_length_is_never_handed_over_whole() -> None:
    relay = _BodyRelay(3 * MiB)
    writer = _writer(relay, [b"a" * MiB] * 2)
    writer.start()
    writer.join()
    # What arrived is handed over (it does not complete the body); the store then waits for
    # more, and the refusal of the incomplete upload abandons its write.
    assert relay.read(3 * MiB) == b"a" * 2 * MiB
    relay.decide(False)
    with pytest.raises(_Refused):
        relay.read(MiB)


def test_an_inspection_spool_leaves_the_bulk_weights_out(tmp_path: Path) -> None:
    data = builders.relu_bytes(1 << 17)  # a 1 MiB weight, the bulk bound
    weight = builders.relu_model(1 << 17).graph.initializer[0].raw_data
    start = data.index(weight)
    received: list[bytes] = []
    spool = spool_stream(
        Trickle(data, 65521),
        directory=tmp_path,
        size_max=len(data),
        on_chunk=received.append,
        bulk=BulkRanges(MiB),
    )
    assert not spool.whole
    assert (spool.sha256, spool.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert b"".join(received) == data  # the store still gets every byte
    held = spool.path.read_bytes()
    assert held == data[:start] + bytes(len(weight)) + data[start + len(weight) :]
    # Only the weight is a hole on disk (the file system allocates less than its size).
    assert spool.path.stat().st_blocks * 512 < len(data) - len(weight) + 64 * 1024
    # A spool without the search is whole.
    plain = spool_stream(io.BytesIO(data), directory=tmp_path, size_max=len(data))
    assert plain.whole and plain.path.read_bytes() == data

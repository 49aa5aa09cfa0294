"""Signed notes and checkpoint texts: the reference implementation's vector, and every refusal."""

from __future__ import annotations

import base64

import pytest

from marketplace.audit import notes
from marketplace.audit.notes import NoteError, Signer, VerifierKey
from marketplace.audit.tlog import Checkpoint

# The example key pair and note of golang.org/x/mod/sumdb/note (its package documentation and
# tests): signing is deterministic (RFC 8032), so ours must reproduce the note byte for byte.
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2"
    "pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_the_reference_note_is_reproduced_and_verified():
    signer = Signer.parse(GO_SIGNER)
    assert signer.encode() == GO_SIGNER
    assert signer.verifier().encode() == GO_VERIFIER
    assert VerifierKey.parse(GO_VERIFIER) == signer.verifier()
    assert notes.sign_note(GO_TEXT, [signer]) == GO_NOTE
    opened = notes.open_note(GO_NOTE, [VerifierKey.parse(GO_VERIFIER)])
    assert opened.text == GO_TEXT
    assert opened.verified_by == (signer.verifier(),)


def test_key_hash_is_the_first_four_bytes_of_sha256_of_name_newline_type_and_key():
    import hashlib

    key = VerifierKey.parse(GO_VERIFIER)
    digest = hashlib.sha256(b"PeterNeumann\n\x01" + key.public_key).digest()
    assert key.key_hash == int.from_bytes(digest[:4], "big") == 0xC74F20A3


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "bad_verifier_key"),
        ("Peter+Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "bad_verifier_key"),
        (
            "PeterNeumann+c74f20a3+"
            + base64.b64encode(b"\x02" + base64.b64decode(GO_VERIFIER.split("+")[2])[1:]).decode(),
            "unsupported_key",
        ),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10", "bad_base64"),
        ("PeterNeumann+c74f20a3", "bad_verifier_key"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "bad_key_name"),
        ("", "bad_verifier_key"),
    ],
)
def test_malformed_verifier_keys_are_refused(text, code):
    with pytest.raises(NoteError) as exc:
        VerifierKey.parse(text)
    assert exc.value.code == code


def test_verifier_key_lists_skip_comments_and_need_one_key():
    keys = notes.parse_verifier_keys(f"# the log\n\n{GO_VERIFIER}\n")
    assert keys == [VerifierKey.parse(GO_VERIFIER)]
    with pytest.raises(NoteError) as exc:
        notes.parse_verifier_keys("# nothing\n")
    assert exc.value.code == "no_verifier_key"


def test_unknown_keys_are_ignored_but_a_note_needs_one_trusted_signature():
    peter = Signer.parse(GO_SIGNER)
    other = Signer.generate("example.test/other")
    both = notes.sign_note(GO_TEXT, [other, peter])
    assert notes.open_note(both, [peter.verifier()]).verified_by == (peter.verifier(),)
    with pytest.raises(NoteError) as exc:
        notes.open_note(notes.sign_note(GO_TEXT, [other]), [peter.verifier()])
    assert exc.value.code == "unknown_key"
    assert "example.test/other" in str(exc.value)
    # Same name, another key: its hash differs, so it is an unknown key, not a bad signature.
    impostor = Signer.generate("PeterNeumann")
    with pytest.raises(NoteError) as exc:
        notes.open_note(notes.sign_note(GO_TEXT, [impostor]), [peter.verifier()])
    assert exc.value.code == "unknown_key"


def test_an_altered_text_or_signature_from_a_known_key_is_refused():
    key = VerifierKey.parse(GO_VERIFIER)
    with pytest.raises(NoteError) as exc:
        notes.open_note(GO_NOTE.replace("cryptography", "cryptographY"), [key])
    assert exc.value.code == "bad_signature"
    line = GO_NOTE.splitlines()[-1]
    raw = bytearray(base64.b64decode(line.split(" ")[-1]))
    raw[10] ^= 1
    forged = GO_NOTE.replace(line.split(" ")[-1], base64.b64encode(bytes(raw)).decode())
    with pytest.raises(NoteError) as exc:
        notes.open_note(forged, [key])
    assert exc.value.code == "bad_signature"


@pytest.mark.parametrize(
    "note",
    [
        GO_TEXT,  # no signature block
        GO_NOTE.rstrip("\n"),  # no final newline
        GO_NOTE.replace("\u2014 ", "- "),
        GO_NOTE.replace("\n\n", "\n\x07\n"),
        GO_NOTE.replace("x08go", "!x08go"),
        b"\xff" + GO_NOTE.encode(),
        GO_TEXT + "\n\u2014 PeterNeumann AAAA\n",  # shorter than a key hash and a signature
    ],
)
def test_malformed_notes_are_refused(note):
    with pytest.raises(NoteError) as exc:
        notes.open_note(note, [VerifierKey.parse(GO_VERIFIER)])
    assert exc.value.code == "malformed_note"


def test_sign_refuses_texts_that_cannot_be_notes():
    signer = Signer.generate("example.test/log")
    with pytest.raises(NoteError):
        notes.sign_note("no newline", [signer])
    with pytest.raises(NoteError):
        notes.sign_note("bell\x07\n", [signer])
    with pytest.raises(NoteError):
        Signer.generate("has space")


def test_checkpoint_text_round_trips_and_refuses_malformed_bodies():
    checkpoint = Checkpoint(origin="example.test/log", size=20852163, root=bytes(range(32)))
    text = checkpoint.text()
    assert text == "example.test/log\n20852163\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    assert Checkpoint.parse(text) == checkpoint
    assert Checkpoint.parse(text + "extension\n") == checkpoint
    root = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    for bad in (
        "example.test/log\n20852163\n",
        f"example.test/log\n020852163\n{root}\n",
        f"example.test/log\n-1\n{root}\n",
        f"example.test/log\n1\n{root[:-4]}\n",
        f"example.test/log\n1\n{root}\n\nextension\n",
        f"\n1\n{root}\n",
    ):
        with pytest.raises(NoteError) as exc:
            Checkpoint.parse(bad)
        assert exc.value.code == "malformed_checkpoint"

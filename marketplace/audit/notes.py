"""C2SP signed notes with Ed25519 keys: sign, verify, and the standard key strings.

A note is UTF-8 text ending in a newline, a blank line, then signature lines
``— <key name> base64(key hash ‖ signature)``. Keys are written as transparency logs write
them (the format of ``golang.org/x/mod/sumdb/note``), so other tools read ours:

* verifier key: ``<name>+<hash as 8 hex digits>+base64(0x01 ‖ 32-byte public key)``;
* signer key: ``PRIVATE+KEY+<name>+<hash>+base64(0x01 ‖ 32-byte seed)``;
* key hash: the first four bytes (big-endian) of SHA-256(name ‖ ``\\n`` ‖ 0x01 ‖ public key).

Verification follows the spec: signatures from unknown keys (name and hash not both known) are
ignored, a signature from a known key that does not verify rejects the note, and a note with no
verified signature from a known key is rejected. No Flask, no database: the offline verifier and
other programs use this module alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519 = 0x01  # the signature type byte of Ed25519 in signed notes
SIGNATURES_MAX = 100  # the spec asks verifiers to accept at least 16
NOTE_BYTES_MAX = 1024 * 1024
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"


class NoteError(ValueError):
    """A note or key string cannot be used; ``code`` says why (stable, for callers and tests)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_key_name(name: str) -> str:
    """``name`` if it can name a key (non-empty, no spaces, no ``+``); NoteError otherwise."""
    if not name or "+" in name or any(c.isspace() for c in name) or not name.isprintable():
        raise NoteError("bad_key_name", f"{name!r} cannot name a key (empty, space or '+')")
    return name


def key_hash(name: str, public_key: bytes) -> int:
    """The uint32 key hash of an Ed25519 key: SHA-256(name ‖ \\n ‖ 0x01 ‖ key)[:4]."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()
    return int(struct.unpack(">I", digest[:4])[0])


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise NoteError("bad_base64", f"{what} is not valid base64") from None


@dataclass(frozen=True)
class VerifierKey:
    """A public key that can check a note's signature, with its name and hash."""

    name: str
    key_hash: int
    public_key: bytes

    def encode(self) -> str:
        """The verifier-key string ``name+hash+base64(0x01‖key)``."""
        raw = base64.b64encode(bytes([ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_hash:08x}+{raw}"

    @property
    def key_hash_hex(self) -> str:
        return f"{self.key_hash:08x}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Parse a verifier-key string; the hash must match the name and the key."""
        text = text.strip()
        name, sep1, rest = text.partition("+")
        hash_hex, sep2, raw_b64 = rest.partition("+")
        if not sep1 or not sep2 or len(hash_hex) != 8:
            raise NoteError("bad_verifier_key", "a verifier key is name+hash+base64(0x01‖key)")
        check_key_name(name)
        try:
            hash_value = int(hash_hex, 16)
        except ValueError:
            raise NoteError("bad_verifier_key", "the key hash is not 8 hex digits") from None
        raw = _b64decode(raw_b64, "the verifier key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("unsupported_key", "only Ed25519 verifier keys (type 0x01) are known")
        public_key = raw[1:]
        if key_hash(name, public_key) != hash_value:
            raise NoteError("bad_verifier_key", "the key hash does not match the name and key")
        return cls(name=name, key_hash=hash_value, public_key=public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


def parse_verifier_keys(text: str) -> list[VerifierKey]:
    """Every verifier key in ``text``: one per line; blank lines and ``#`` comments skipped."""
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(VerifierKey.parse(line))
    if not keys:
        raise NoteError("no_verifier_key", "no verifier key was given")
    return keys


@dataclass(frozen=True)
class Signer:
    """An Ed25519 private key with its name: signs notes."""

    name: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name=check_key_name(name), private_key=Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_hash(self) -> int:
        return key_hash(self.name, self.public_key)

    def verifier(self) -> VerifierKey:
        return VerifierKey(name=self.name, key_hash=self.key_hash, public_key=self.public_key)

    def encode(self) -> str:
        """The signer-key string ``PRIVATE+KEY+name+hash+base64(0x01‖seed)`` (a secret)."""
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        seed = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        raw = base64.b64encode(bytes([ED25519]) + seed).decode()
        return f"{PRIVATE_KEY_PREFIX}{self.name}+{self.key_hash:08x}+{raw}"

    @classmethod
    def parse(cls, text: str) -> Signer:
        """Parse a signer-key string; the hash must match the name and the derived public key."""
        text = text.strip()
        if not text.startswith(PRIVATE_KEY_PREFIX):
            raise NoteError("bad_signer_key", "a signer key starts with PRIVATE+KEY+")
        name, sep1, rest = text[len(PRIVATE_KEY_PREFIX) :].partition("+")
        hash_hex, sep2, raw_b64 = rest.partition("+")
        if not sep1 or not sep2 or len(hash_hex) != 8:
            raise NoteError("bad_signer_key", "a signer key is PRIVATE+KEY+name+hash+base64")
        check_key_name(name)
        raw = _b64decode(raw_b64, "the signer key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("unsupported_key", "only Ed25519 signer keys (type 0x01) are known")
        signer = cls(name=name, private_key=Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if f"{signer.key_hash:08x}" != hash_hex.lower():
            raise NoteError("bad_signer_key", "the key hash does not match the name and key")
        return signer

    def signature_line(self, text: str) -> str:
        signature = self.private_key.sign(text.encode("utf-8"))
        raw = base64.b64encode(struct.pack(">I", self.key_hash) + signature).decode()
        return f"{SIGNATURE_PREFIX}{self.name} {raw}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("malformed_note", "a note's text must end with a newline")
    if any(c < " " and c != "\n" for c in text):
        raise NoteError("malformed_note", "a note must not hold control characters")


def sign_note(text: str, signers: Sequence[Signer]) -> str:
    """The signed note: ``text``, a blank line, one signature line per signer."""
    _check_text(text)
    if not signers:
        raise ValueError("a note needs at least one signer")
    return text + "\n" + "".join(s.signature_line(text) for s in signers)


@dataclass(frozen=True)
class Signature:
    """One signature line of a note, parsed but not verified: the key it names and its bytes."""

    name: str
    key_hash: int
    signature: bytes

    @classmethod
    def parse(cls, line: str) -> Signature:
        """Parse ``— <key name> base64(key hash ‖ signature)``; ``malformed_note`` otherwise."""
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError("malformed_note", "a signature line starts with an em dash and space")
        name, _, raw_b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        try:
            check_key_name(name)
            raw = _b64decode(raw_b64, "a signature")
        except NoteError as exc:
            raise NoteError("malformed_note", str(exc)) from None
        if len(raw) < 5:
            raise NoteError("malformed_note", "a signature is a key hash and signature bytes")
        return cls(name=name, key_hash=int(struct.unpack(">I", raw[:4])[0]), signature=raw[4:])


@dataclass(frozen=True)
class Note:
    """A note whose signature from at least one trusted key verified."""

    text: str
    verified_by: tuple[VerifierKey, ...]
    signatures: tuple[Signature, ...]


def split_note(note: str | bytes) -> tuple[str, list[Signature]]:
    """The note's text and its signatures, parsed but not verified."""
    if isinstance(note, bytes):
        if len(note) > NOTE_BYTES_MAX:
            raise NoteError("malformed_note", "the note is too large")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("malformed_note", "a note must be UTF-8") from None
    if len(note) > NOTE_BYTES_MAX:
        raise NoteError("malformed_note", "the note is too large")
    if any(c < " " and c != "\n" for c in note):
        raise NoteError("malformed_note", "a note must not hold control characters")
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise NoteError("malformed_note", "a note is text, a blank line, then signature lines")
    text, block = note[: split + 1], note[split + 2 :]
    signatures = []
    for line in block[:-1].split("\n"):
        signatures.append(Signature.parse(line))
        if len(signatures) > SIGNATURES_MAX:
            raise NoteError("malformed_note", f"a note has at most {SIGNATURES_MAX} signatures")
    return text, signatures


def open_note(note: str | bytes, verifiers: Iterable[VerifierKey]) -> Note:
    """Verify ``note`` against trusted keys; the verified note, or NoteError.

    Codes: ``malformed_note``; ``bad_signature`` (a known key's signature fails);
    ``unknown_key`` (no signature from any known key).
    """
    text, signatures = split_note(note)
    known = {(v.name, v.key_hash): v for v in verifiers}
    verified = []
    message = text.encode("utf-8")
    for sig in signatures:
        key = known.get((sig.name, sig.key_hash))
        if key is None:
            continue
        if not key.verify(message, sig.signature):
            raise NoteError(
                "bad_signature",
                f"the signature of {sig.name}+{sig.key_hash:08x} does not verify",
            )
        verified.append(key)
    if not verified:
        seen = ", ".join(f"{s.name}+{s.key_hash:08x}" for s in signatures)
        raise NoteError("unknown_key", f"no signature from a trusted key (signed by {seen})")
    return Note(text=text, verified_by=tuple(verified), signatures=tuple(signatures))

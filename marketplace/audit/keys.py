"""The journal's signing key: where it lives, how it rotates, which public keys are published.

The private key is one file holding the standard signer-key string
(``PRIVATE+KEY+<origin>+<hash>+…``, mode 0600). On the embedded default it is generated in the
instance folder on first start; in production it is read from ``MARKETPLACE_AUDIT_KEY_PATH``
and the app refuses to start without it. The key is named after the journal's origin, as
``tlog-checkpoint`` asks, so a key whose name is not the origin is refused in production (and
replaced by a fresh one on the embedded default).

Public keys are published from the ``audit_keys`` table with the time each was in use, so every
node lists the same keys and a rotated key stays published for ever: checkpoints and reports
it signed keep verifying. The store re-reads the key file when it changes, so a rotation on one
machine is picked up by the other processes reading the same file.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from marketplace.audit.models import keys_t as _keys_t
from marketplace.audit.notes import NoteError, Signer, VerifierKey, sign_note
from marketplace.config import ConfigError
from marketplace.db import utcnow
from marketplace.files import replaced_atomically

log = logging.getLogger(__name__)

DEFAULT_KEY_FILE = "audit-ed25519.key"


@dataclass(frozen=True)
class PublishedKey:
    """A public key as ``GET /api/v1/audit/public-keys`` lists it."""

    name: str
    key_hash: str
    public_key: str  # base64 of the 32-byte Ed25519 key
    verifier_key: str  # name+hash+base64(0x01‖key), what `jishi audit verify` takes
    valid_from: dt.datetime | None
    valid_to: dt.datetime | None
    current: bool


def write_private_key(path: Path, signer: Signer) -> None:
    """Write the key file atomically, readable by its owner only."""
    with replaced_atomically(path, mode=0o600) as out:
        out.write((signer.encode() + "\n").encode())


class AuditKeyStore:
    """The current signing key (from its file) and the published public keys (from the database).

    Kept in ``app.extensions["audit_keys"]``. :meth:`sign_note` signs with the current key;
    :meth:`public_keys` lists every key ever used.
    """

    def __init__(self, path: Path, origin: str, *, generate: bool) -> None:
        self.path = path
        self.origin = origin
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._signer: Signer | None = None
        if not path.exists():
            if not generate:
                raise ConfigError(
                    f"MARKETPLACE_AUDIT_KEY_PATH: no journal signing key at {path}; create one "
                    "with `jishi audit rotate-key` or install the operator's key there"
                )
            write_private_key(path, Signer.generate(origin))
            log.info("generated a journal signing key for %s at %s", origin, path)
        signer = self.signer
        if signer.name != origin:
            if not generate:
                raise ConfigError(
                    f"the journal signing key is named {signer.name!r} but the journal's origin "
                    f"(MARKETPLACE_AUDIT_ORIGIN) is {origin!r}; rotate the key"
                )
            log.warning(
                "journal key named %s, origin is %s: generating a new key", signer.name, origin
            )
            write_private_key(path, Signer.generate(origin))

    @property
    def signer(self) -> Signer:
        """The current key, re-read when its file has changed."""
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                if self._signer is None:
                    raise
                return self._signer  # keep signing with the key we have until a new one lands
            stamp = (stat.st_mtime_ns, stat.st_ino)
            if self._signer is None or stamp != self._stamp:
                try:
                    self._signer = Signer.parse(self.path.read_text())
                except NoteError as exc:
                    raise ConfigError(f"the journal signing key at {self.path}: {exc}") from None
                self._stamp = stamp
            return self._signer

    def verifier(self) -> VerifierKey:
        return self.signer.verifier()

    def sign_note(self, text: str) -> str:
        """``text`` as a C2SP signed note, signed with the current key."""
        return sign_note(text, [self.signer])

    def register_current(self, session: Session) -> None:
        """Publish the current key if it is not yet (in the caller's transaction)."""
        key = self.verifier()
        if self._find(session, key) is not None:
            return
        try:
            with session.begin_nested():
                session.execute(
                    sa.insert(_keys_t).values(
                        name=key.name,
                        key_hash=key.key_hash_hex,
                        public_key=key.public_key,
                        valid_from=utcnow(),
                    )
                )
        except IntegrityError:
            pass  # another node published it first

    @staticmethod
    def _find(session: Session, key: VerifierKey) -> int | None:
        found = session.execute(
            sa.select(_keys_t.c.id).where(
                _keys_t.c.name == key.name, _keys_t.c.key_hash == key.key_hash_hex
            )
        ).scalar()
        return None if found is None else int(found)

    def public_keys(self, session: Session) -> list[PublishedKey]:
        """Every key the journal has signed with, oldest first; the current one marked."""
        current = self.verifier()
        rows = session.execute(sa.select(_keys_t).order_by(_keys_t.c.id)).mappings().all()
        out = []
        for row in rows:
            key = VerifierKey(row["name"], int(row["key_hash"], 16), bytes(row["public_key"]))
            out.append(_published(key, row["valid_from"], row["valid_to"], key == current))
        if not any(k.current for k in out):
            # In use but not yet recorded (nothing signed since it was installed).
            out.append(_published(current, None, None, True))
        return out

    def rotate(self, session: Session) -> tuple[VerifierKey, VerifierKey]:
        """Replace the signing key; the old public key stays published. (old, new)."""
        old = self.verifier()
        new = Signer.generate(self.origin)
        now = utcnow()
        staged = self.path.with_name(f".{self.path.name}.rotating")
        write_private_key(staged, new)
        try:
            self.register_current(session)
            session.execute(
                sa.update(_keys_t).where(_keys_t.c.valid_to.is_(None)).values(valid_to=now)
            )
            session.execute(
                sa.insert(_keys_t).values(
                    name=new.name,
                    key_hash=f"{new.key_hash:08x}",
                    public_key=new.public_key,
                    valid_from=now,
                )
            )
            session.commit()
        except BaseException:
            session.rollback()
            staged.unlink(missing_ok=True)
            raise
        # The new key is published before it signs anything; now make it the current one.
        os.replace(staged, self.path)
        return old, new.verifier()


def _published(
    key: VerifierKey, valid_from: dt.datetime | None, valid_to: dt.datetime | None, current: bool
) -> PublishedKey:
    return PublishedKey(
        name=key.name,
        key_hash=key.key_hash_hex,
        public_key=base64.b64encode(key.public_key).decode(),
        verifier_key=key.encode(),
        valid_from=valid_from,
        valid_to=valid_to,
        current=current,
    )


def default_origin() -> str:
    """The host name and ``/jishi``: a schema-less URL naming this journal."""
    import socket

    # The host name alone: a fully qualified name could need a DNS query at start-up.
    host = socket.gethostname() or "localhost"
    return f"{host.lower()}/jishi"


def open_key_store(
    *, key_path: str, origin: str, instance_path: Path, development: bool
) -> AuditKeyStore:
    """The key store for these settings; refuses production without a configured key file."""
    if key_path:
        return AuditKeyStore(Path(key_path), origin, generate=development)
    if not development:
        raise ConfigError(
            "MARKETPLACE_AUDIT_KEY_PATH is unset; production signs the journal with a key the "
            "operator keeps (create one with `jishi audit generate-key --out FILE`)"
        )
    return AuditKeyStore(instance_path / DEFAULT_KEY_FILE, origin, generate=True)

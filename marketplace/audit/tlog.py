"""C2SP ``tlog-checkpoint`` note texts: origin, tree size and base64 root, one per line.

The checkpoint is signed as a signed note (:mod:`marketplace.audit.notes`) under a key named
after the origin, so any transparency-log verifier reads it. No Flask, no database.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from marketplace.audit.merkle import HASH_BYTES
from marketplace.audit.notes import NoteError, check_key_name

SIZE_DIGITS_MAX = 20  # 2**64 has 20 digits


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: its origin, the number of leaves and the root hash."""

    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        """The note text: three lines, each ending in a newline, no extension lines."""
        check_key_name(self.origin)
        if self.size < 0 or len(self.root) != HASH_BYTES:
            raise ValueError("a checkpoint has a non-negative size and a 32-byte root")
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint's note text (extension lines are allowed and ignored)."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or any(line == "" for line in lines[:-1]):
            raise NoteError("malformed_checkpoint", "a checkpoint is at least three lines")
        origin, size_text, root_text = lines[0], lines[1], lines[2]
        if not origin:
            raise NoteError("malformed_checkpoint", "the checkpoint's origin is empty")
        if (
            not size_text.isascii()
            or not size_text.isdigit()
            or len(size_text) > SIZE_DIGITS_MAX
            or (size_text != "0" and size_text.startswith("0"))
        ):
            raise NoteError("malformed_checkpoint", "the tree size is not a plain decimal number")
        try:
            root = base64.b64decode(root_text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise NoteError("malformed_checkpoint", "the root hash is not base64") from None
        if len(root) != HASH_BYTES:
            raise NoteError("malformed_checkpoint", "the root hash is not 32 bytes")
        return cls(origin=origin, size=int(size_text), root=root)

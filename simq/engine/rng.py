"""Named, seeded random streams.

Internal. Each stream is a ``random.Random`` seeded from ``sha256(seed, name)``, so
adding a new stream (a new fault kind, say) never reshuffles an existing one, and the
global ``random`` module is never touched.
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["Streams"]


class Streams:
    """The random streams of one simulation run, derived from its seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._streams: dict[str, random.Random] = {}

    def stream(self, name: str) -> random.Random:
        """The stream called ``name``, created on first use."""
        rng = self._streams.get(name)
        if rng is None:
            digest = hashlib.sha256(f"{self.seed}:{name}".encode()).digest()
            rng = self._streams[name] = random.Random(int.from_bytes(digest[:16], "big"))
        return rng

    def uuid(self, name: str = "task_ids") -> str:
        """A version-4 UUID string drawn from stream ``name`` (what uuid4() looks like)."""
        n = self.stream(name).getrandbits(128)
        # Set the variant (RFC 4122) and version (4) bits, as uuid.UUID(version=4) does.
        n = (n & _VARIANT_MASK) | _VARIANT_BITS
        n = (n & _VERSION_MASK) | _VERSION_BITS
        h = f"{n:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_VARIANT_MASK = ~(0xC000 << 48)
_VARIANT_BITS = 0x8000 << 48
_VERSION_MASK = ~(0xF000 << 64)
_VERSION_BITS = 4 << 76

"""Counters of a connection or client, as a dataclass (see :meth:`Connection.stats`, :meth:`Client.stats`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Stats"]


@dataclass(frozen=True)
class Stats:
    """Counters of one side of a connection.

    ``packets``/``bytes`` count what was sent (server side) or received (client side); ``dropped_*`` what the
    server dropped under the ``"drop"`` overflow policy (visible on both sides); ``blocked_ns`` the time spent
    waiting (for ring space on the server side, for packets on the client side); ``ring_used_*`` the ring's fill
    at the time of the call, out of ``ring_bytes``/``ring_slots``.
    """

    packets: int = 0
    bytes: int = 0
    dropped_packets: int = 0
    dropped_bytes: int = 0
    blocked_ns: int = 0
    ring_used_bytes: int = 0
    ring_bytes: int = 0
    ring_used_slots: int = 0
    ring_slots: int = 0

    @classmethod
    def _from_tuple(cls, values: Any) -> Stats:
        """From the C core's named tuple (``_core.StatsValues``), field by field."""
        return cls(**{name: getattr(values, name) for name in cls.__dataclass_fields__})

    @property
    def ring_fill(self) -> float:
        """Fraction of the ring in use (the larger of the byte and slot fractions), 0.0 to 1.0."""
        b = self.ring_used_bytes / self.ring_bytes if self.ring_bytes else 0.0
        s = self.ring_used_slots / self.ring_slots if self.ring_slots else 0.0
        return max(b, s)

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict (JSON-friendly)."""
        return asdict(self)

    def __add__(self, other: Stats) -> Stats:
        return Stats(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

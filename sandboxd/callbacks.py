"""The contract between the service, its journal and the webhook dispatcher.

The service hands a finished job with a `callback_url` to a `CallbackNotifier`
(webhooks.py); the dispatcher keeps every delivery in a `DeliveryStore` (the journal,
or memory) so a restart does not drop one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sandboxd.model import CallbackFormat, Result


@dataclass(frozen=True)
class Delivery:
    """A callback not yet delivered: `method` (POST, or PUT for a Judge0 callback)
    `body` (the result's JSON, rendered when the job finished) to `url`."""

    id: int
    job_id: str
    url: str
    body: bytes
    attempts: int  # attempts made so far
    method: str = "POST"


class DeliveryStore(Protocol):
    async def add_delivery(self, job_id: str, url: str, body: bytes,
                           method: str = "POST") -> int:
        """Record a new delivery (durably, where the store is); its id."""
        ...

    async def record_attempt(self, delivery_id: int, attempts: int, error: str | None) -> None:
        """A failed attempt, to be retried: the count so far and why it failed."""
        ...

    async def finish_delivery(self, delivery_id: int, *, delivered: bool, attempts: int,
                              error: str | None) -> None:
        """Delivered, or given up on: never attempted again."""
        ...

    async def pending_deliveries(self) -> list[Delivery]:
        """Deliveries neither delivered nor given up on, oldest first (on start)."""
        ...


class CallbackNotifier(Protocol):
    def notify(self, job_id: str, url: str, result: Result,
               callback_format: CallbackFormat = CallbackFormat.NATIVE) -> None:
        """Deliver `result` to `url`, in `callback_format`'s shape, in the background
        (never blocks, never raises)."""
        ...

"""hypercorn's HTTP/2 protocol, kept alive when a client sends data for a stream that is
already closed on the server's side.

hypercorn 0.18 looks the stream up without a guard when DATA arrives (its END_STREAM
branch has one), so a client that sends a request body, or a WebSocket frame, after the
gateway has answered or closed that stream raises ``KeyError`` out of the connection, and
under trio out of the server: the whole process stops (pgjones/hypercorn#329, open). A
browser does it in the ordinary course: a page sending a message while the gateway relays
the upstream's close frame over an RFC 8441 WebSocket. Here such DATA is acknowledged for
flow control and dropped, as RFC 9113 section 6.1 has a receiver do for a closed stream.
"""

from __future__ import annotations

import contextlib

import h2.events
import h2.exceptions
from hypercorn.protocol.h2 import H2Protocol

_original = H2Protocol._handle_events


async def _handle_events(self: H2Protocol, events: list[h2.events.Event]) -> None:
    # one at a time: an earlier event of a batch may close the stream a DATA is for
    dropped = False
    for event in events:
        if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
            with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
                self.connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
            dropped = True
            continue
        await _original(self, [event])
    if dropped:
        await _original(self, [])  # sends the acknowledgements


_installed = False


def install() -> None:
    """Guard ``H2Protocol._handle_events`` (idempotent)."""
    global _installed
    if not _installed:
        H2Protocol._handle_events = _handle_events  # type: ignore[method-assign]
        _installed = True

"""Compressing responses as they are sent (I/O edge): an ASGI send wrapper and the encoders.

The rules (negotiation, what may be compressed, how the head changes) are the pure ones
of :mod:`gateway._rules.encoding`; this module applies them to the messages of one
response. The app installs the wrapper only for a request to an endpoint with compression
whose Accept-Encoding chose a coding (or, where an upstream's Vary can reach the answer,
a lighter one that merges Vary): a request without Accept-Encoding pays for nothing but
the endpoint's static ``Vary: Accept-Encoding``.

The wrapper holds ``http.response.start`` until the first body message, since the head
depends on the body:

- one body message (``more_body`` false, an aggregated answer): compressed whole if at
  least ``min_size``, with the compressed Content-Length;
- a stream (``more_body``, passthrough): compressed as it streams, each chunk flushed
  (gzip's sync flush, brotli's and zstd's block flush) so that an event stream or a slow
  download is never held back by the encoder; no Content-Length (the server frames it);
- HEAD (RFC 9110 section 9.3.2): the head GET would have and no body. An aggregated
  answer's content is at hand (:data:`HEAD_CONTENT`), so it is compressed to give GET's
  exact Content-Length; a passthrough head has no content, so the field is left out
  when GET's body would be compressed (the RFC allows that).

The event loop: a body or chunk of :data:`~gateway._rules.encoding.THREAD_CUTOFF_BYTES`
or more for its coding and level is compressed in a worker thread (``trio.to_thread``),
smaller ones inline. The cut-off is where compressing inline takes longer than a thread
hop costs the loop: the hop measured 130 to 230 us wall and 100 to 150 us of the loop's
CPU on the 2-core development machine (``bench/compress_cost.py``; bench/README.md has the
table). At the default levels that is about 14.5 KiB for brotli 3, 67 KiB for zstd 3 and
11.5 KiB for gzip 5; brotli 9 to 11 always go to a thread. brotli, zstandard and zlib
release the GIL while they compress, so the loop keeps running meanwhile (checked by the
same script). A request cancelled meanwhile (its client left) waits for its thread to end:
a thread cannot be stopped. So a whole body over :data:`SLICE_BYTES` (1 MiB) is
compressed a slice per thread call (:func:`whole_encoder`, nothing flushed between
slices, so about the same size as in one shot; HEAD takes the same path for GET's exact
length), and a cancelled request stops at the next slice
rather than after the whole body (brotli 11 takes about 1.5 s a slice, the default
levels a few ms). A stream is compressed chunk by chunk and is cancelled with it.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import brotli
import trio
import zstandard

from ._errors import NotAcceptable
from ._rules.encoding import (
    Choice,
    CompressionPolicy,
    Head,
    big_enough,
    choose,
    encoded_head,
    may_compress,
    parse_accept_encoding,
    read_head,
    unacceptable,
    weakened,
    with_vary,
)

Message = dict[str, Any]

HEAD_CONTENT = "gateway.head_content"
"""Key of the empty body message of a HEAD answer whose GET content is at hand (an
aggregated answer): the content GET would send, so the head can give its exact
Content-Length after compression, as GET's does. The server ignores the key."""
Send = Callable[[Message], Awaitable[None]]
Refuse = Callable[[Send, NotAcceptable], Awaitable[None]]
"""Sends the 406 of a response the client cannot take through the given ``send``, with
the fields the request's other answers get (the app's: CORS, response_headers)."""

_GZIP_WBITS = 31  # a gzip header and trailer (RFC 1952), not a bare zlib stream
_local = threading.local()  # per thread: a zstd context is not safe to share


def _zstd(level: int) -> zstandard.ZstdCompressor:
    """This thread's compressor for ``level``: creating one costs about 10 us."""
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "zstd", None)
    if cache is None:
        cache = _local.zstd = {}
    compressor = cache.get(level)
    if compressor is None:
        compressor = cache[level] = zstandard.ZstdCompressor(level=level)
    return compressor


def one_shot(coding: str, level: int, data: bytes) -> bytes:
    """``data`` compressed whole with ``coding`` (``br``, ``zstd`` or ``gzip``)."""
    if coding == "br":
        return bytes(brotli.compress(data, quality=level))
    if coding == "zstd":
        return _zstd(level).compress(data)
    return zlib.compress(data, level, wbits=_GZIP_WBITS)


class StreamEncoder:
    """One response body compressed as it streams; every chunk's output is complete
    (flushed), so the client can decode all it has received."""

    __slots__ = ("_chunk", "_finish")

    def __init__(self, chunk: Callable[[bytes], bytes], finish: Callable[[bytes], bytes]) -> None:
        self._chunk = chunk
        self._finish = finish

    def chunk(self, data: bytes) -> bytes:
        return self._chunk(data)

    def finish(self, data: bytes = b"") -> bytes:
        """The last of the body: ``data`` and the end of the stream."""
        return self._finish(data)


def stream_encoder(coding: str, level: int) -> StreamEncoder:
    if coding == "br":
        br = brotli.Compressor(quality=level)
        return StreamEncoder(
            lambda data: bytes(br.process(data)) + bytes(br.flush()),
            lambda data: bytes(br.process(data)) + bytes(br.finish()),
        )
    if coding == "zstd":
        # a context of its own: a stream holds it until it ends
        zstd = zstandard.ZstdCompressor(level=level).compressobj()
        return StreamEncoder(
            lambda data: zstd.compress(data) + zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK),
            lambda data: zstd.compress(data) + zstd.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH),
        )
    gz = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
    return StreamEncoder(
        lambda data: gz.compress(data) + gz.flush(zlib.Z_SYNC_FLUSH),
        lambda data: gz.compress(data) + gz.flush(zlib.Z_FINISH),
    )


def accept_weights(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, float] | None:
    """The weights of a request's Accept-Encoding field lines (None: no field)."""
    values = [value for name, value in headers if name == b"accept-encoding"]
    return parse_accept_encoding(values) if values else None


SLICE_BYTES = 1024 * 1024
"""A whole body larger than this is compressed in slices of this size, one worker-thread
call each (see the module docstring)."""


def whole_encoder(coding: str, level: int, size: int) -> StreamEncoder:
    """One whole body of ``size`` bytes compressed a slice at a time, nothing flushed in
    between: the same bytes for the same body and slicing (a HEAD's length is GET's)."""
    if coding == "br":
        br = brotli.Compressor(quality=level)
        return StreamEncoder(
            lambda data: bytes(br.process(data)),
            lambda data: bytes(br.process(data)) + bytes(br.finish()),
        )
    if coding == "zstd":
        zstd = zstandard.ZstdCompressor(level=level).compressobj(size=size)
        return StreamEncoder(
            zstd.compress,
            lambda data: zstd.compress(data) + zstd.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH),
        )
    gz = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
    return StreamEncoder(gz.compress, lambda data: gz.compress(data) + gz.flush(zlib.Z_FINISH))


def negotiate(policy: CompressionPolicy, headers: Sequence[tuple[bytes, bytes]]) -> Choice:
    """The coding for a request's Accept-Encoding field lines (RFC 9110 section 12.5.3)."""
    return choose(accept_weights(headers), policy.codings)


async def _plain_refusal(send: Send, error: NotAcceptable) -> None:
    from ._endpoint import send_error  # here: that module imports this one

    await send_error(send, error)


def compressing(
    send: Send,
    policy: CompressionPolicy,
    scope: dict[str, Any],
    refuse: Refuse = _plain_refusal,
) -> tuple[Send, NotAcceptable | None]:
    """The ``send`` for one request to an endpoint with ``policy``, and the refusal to
    answer instead when its Accept-Encoding accepts nothing the gateway can send.

    ``refuse`` sends the 406 that replaces a response the gateway may not compress to a
    client that excludes identity (:func:`~gateway._rules.encoding.unacceptable`)."""
    weights = accept_weights(scope["headers"])
    choice = choose(weights, policy.codings)
    if choice.coding is not None:
        compressor = _Compressing(
            send,
            policy,
            choice.coding,
            weights if choice.forced else None,
            head=scope["method"] == "HEAD",
            refuse=refuse,
        )
        return compressor, None
    if policy.merge_vary:
        send = _vary_merging(send)
    if choice.identity_ok:
        return send, None
    return send, NotAcceptable(
        "the request's Accept-Encoding refuses identity and accepts none of "
        + ", ".join(policy.codings)
    )


def _vary_merging(send: Send) -> Send:
    """``send`` whose response head has one Vary field naming Accept-Encoding."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": with_vary(message.get("headers", []))}
        await send(message)

    return sending


_PASS, _HOLD, _STREAM, _SWALLOW = 0, 1, 2, 3


class _Compressing:
    """The send wrapper of one response compressed with ``coding`` (see the module
    docstring). ``forced`` (the weights of an Accept-Encoding that excludes identity):
    size and type do not matter, and a response that may not be compressed is replaced
    by a 406 unless its own coding is acceptable (the rest of its body is dropped)."""

    __slots__ = (
        "coding",
        "cutoff",
        "encoder",
        "forced",
        "head",
        "policy",
        "refuse",
        "send",
        "start",
        "state",
        "weights",
    )

    def __init__(
        self,
        send: Send,
        policy: CompressionPolicy,
        coding: str,
        forced: Mapping[str, float] | None = None,
        *,
        head: bool,
        refuse: Refuse = _plain_refusal,
    ) -> None:
        self.send = send
        self.policy = policy
        self.coding = coding
        self.weights = forced
        self.forced = forced is not None
        self.head = head
        self.refuse = refuse
        self.cutoff = policy.thread_cutoff_bytes(coding)
        self.state = _PASS
        self.start: Message = {}
        self.encoder: StreamEncoder | None = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(message)
        elif kind == "http.response.body" and self.state != _PASS:
            if self.state == _SWALLOW:
                return  # the body of a response replaced by a 406
            if self.state == _HOLD:
                await self._first_body(message)
            else:
                await self._next_body(message)
        else:
            await self.send(message)

    def _head(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return with_vary(headers) if self.policy.merge_vary else headers

    async def _start(self, message: Message) -> None:
        status: int = message["status"]
        headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
        head = read_head(headers)
        if self.weights is not None and unacceptable(status, head, self.weights):
            await self._not_acceptable(head)
        elif status == 304 and not head.encoded:
            # stands for a 200 that would have gone compressed: the same (weak) validator
            await self.send({**message, "headers": self._head(weakened(headers))})
        elif not may_compress(status, head, self.policy, self.forced):
            await self.send({**message, "headers": self._head(headers)})
        else:
            self.start = {**message, "headers": headers}
            self.state = _HOLD

    async def _not_acceptable(self, head: Head) -> None:
        """Answer 406 instead of a response the client cannot take: one it excludes
        the coding of, or one it would get as identity."""
        self.state = _SWALLOW
        if head.codings:
            why = f"does not accept the response's coding ({', '.join(head.codings)})"
        else:
            why = "the response may not be compressed (a part, no-transform or a digest)"
        error = NotAcceptable(f"the request's Accept-Encoding refuses identity and {why}")

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._head(list(message["headers"]))}
            elif self.head:  # the head of the 406 a GET would get
                message = {"type": "http.response.body", "body": b""}
            await self.send(message)

        # its last message ends the response: not to be cut short by a cancellation
        with trio.CancelScope(shield=True):
            await self.refuse(sending, error)

    async def _first_body(self, message: Message) -> None:
        headers = self.start["headers"]
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        merge = self.policy.merge_vary
        if self.head:
            # the head GET would have (RFC 9110 section 9.3.2)
            self.state = _PASS
            content: bytes | None = message.pop(HEAD_CONTENT, None)
            if content is None:
                # a passthrough head: the compressed length is not known, so left out
                length = None
            elif not big_enough(len(content), self.policy, self.forced):
                await self.send({**self.start, "headers": self._head(headers)})
                await self.send(message)
                return
            else:
                length = len(await self._whole(content))
            await self.send(
                {
                    **self.start,
                    "headers": encoded_head(headers, self.coding, length, merge_vary=merge),
                }
            )
            await self.send(message)
        elif not more:
            self.state = _PASS
            if not big_enough(len(body), self.policy, self.forced):
                await self.send({**self.start, "headers": self._head(headers)})
                await self.send(message)
                return
            data = await self._whole(body)
            start_headers = encoded_head(headers, self.coding, len(data), merge_vary=merge)
            await self.send({**self.start, "headers": start_headers})
            await self.send({**message, "body": data})
        else:
            self.state = _STREAM
            self.encoder = stream_encoder(self.coding, self.policy.level(self.coding))
            start_headers = encoded_head(headers, self.coding, None, merge_vary=merge)
            await self.send({**self.start, "headers": start_headers})
            await self._next_body(message)

    async def _next_body(self, message: Message) -> None:
        assert self.encoder is not None
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            if body:
                await self.send({**message, "body": await self._run(self.encoder.chunk, body)})
            return
        self.state = _PASS
        data = await self._run(self.encoder.finish, body)
        await self.send({**message, "body": data})

    async def _whole(self, body: bytes) -> bytes:
        """``body`` compressed whole; over :data:`SLICE_BYTES`, a slice per worker-thread
        call, so that a cancelled request (its client left) stops within one slice."""
        level = self.policy.level(self.coding)
        if len(body) <= SLICE_BYTES:
            return await self._run(one_shot, self.coding, level, body)
        encoder = whole_encoder(self.coding, level, len(body))
        out = []
        last = (len(body) - 1) // SLICE_BYTES * SLICE_BYTES
        for start in range(0, last, SLICE_BYTES):
            piece = body[start : start + SLICE_BYTES]  # a copy: 1 MiB, tens of us
            # checks for cancellation first: a checkpoint between slices
            out.append(await trio.to_thread.run_sync(encoder.chunk, piece))
        out.append(await trio.to_thread.run_sync(encoder.finish, body[last:]))
        return b"".join(out)

    async def _run(self, fn: Callable[..., bytes], *args: Any) -> bytes:
        """``fn(*args)``, in a worker thread when the data (the last argument) is at
        least the cut-off."""
        data: bytes = args[-1]
        if data and len(data) >= self.cutoff:
            return await trio.to_thread.run_sync(fn, *args)
        return fn(*args)

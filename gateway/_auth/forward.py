"""Forward auth: one sub-request to an auth service decides (I/O edge, like nginx
``auth_request``).

The sub-request goes through the gateway's own transport (its pools, TLS settings and
limits), under the policy's timeout, and carries only the request headers the policy
lists. A 2xx passes, and the listed headers of its answer are added to every backend call
of the request; a 401 or 403 goes back to the client as the service sent it (status,
``WWW-Authenticate``, body); anything else is 503 ``auth_unavailable``. Failing closed is
the point: a service that cannot answer never lets a request through.
"""

from __future__ import annotations

import hashlib

import httpx
import trio

from .._call.exchange import BodyTooLarge, Sender, read_limited
from .._call.request import upstream_request
from .._errors import AuthUnavailable, ForwardAuthRefused
from .plan import ForwardPolicy
from .rules import Identity, RawHeaders

MAX_REFUSAL_BODY_BYTES = 64 * 1024
"""The most of a 401/403 body passed back; a longer one is 503 (the service misbehaves)."""

# With the body of a refusal, what tells the client how to read it and how to retry.
PASSED_BACK = frozenset({b"www-authenticate", b"content-type"})


async def ask(policy: ForwardPolicy, sender: Sender, headers: RawHeaders) -> Identity:
    """Ask the auth service about a request with these header lines.

    Raises:
        ForwardAuthRefused: the service answered 401 or 403.
        AuthUnavailable: it failed, timed out or answered anything else.
    """
    copied = [(name, value) for name, value in headers if name.lower() in policy.copy_request]
    request = upstream_request("GET", policy.base, policy.target, list(copied))
    with trio.move_on_after(policy.timeout_s):
        try:
            response = await sender(
                request.base.key,
                request.method,
                request.target.encode("ascii"),
                request.headers,
                None,
            )
            try:
                status = response.status
                if status in (401, 403):
                    body = await read_limited(response, MAX_REFUSAL_BODY_BYTES)
                    passed = tuple((n, v) for n, v in response.headers if n.lower() in PASSED_BACK)
                    raise ForwardAuthRefused(status, passed, body)
                if not 200 <= status < 300:
                    raise AuthUnavailable(
                        "the auth service could not decide", reason=f"forward_http_{status}"
                    )
                added = tuple(
                    (name, value)
                    for wanted in policy.copy_response
                    for name, value in response.headers
                    if name.lower() == wanted
                )
            finally:
                await response.aclose()
        except (httpx.TransportError, BodyTooLarge) as exc:
            raise AuthUnavailable(
                "the auth service could not be reached", reason="forward_unreachable"
            ) from exc
        return Identity(
            policy.name,
            "forward",
            _subject(copied, added),
            headers=added,
            replaces=frozenset(policy.copy_response),
        )
    raise AuthUnavailable(
        f"the auth service did not answer within {policy.timeout_s:g}s", reason="forward_timeout"
    )


def _subject(copied: RawHeaders, added: RawHeaders) -> str:
    """What tells forward-auth identities apart: a digest of the credentials sent and what
    the service answered, never the credentials themselves."""
    digest = hashlib.sha256()
    for name, value in (*copied, (b"", b""), *added):
        digest.update(len(name).to_bytes(4, "big") + name.lower())
        digest.update(len(value).to_bytes(4, "big") + value)
    return digest.hexdigest()

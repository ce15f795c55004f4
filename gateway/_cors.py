"""CORS at the ASGI edge: preflights answered by the gateway, and the fields an actual
request's answers get for its origin. The rules are :mod:`gateway._rules.cors` (pure);
this module reads the request and sends.

A preflight is answered right after the size checks, before authentication and rate
limits (a browser sends it without credentials, and it must not use up a client's
limit), and never reaches an upstream. It is routed by the method it asks about, since
endpoints sharing a path differ by method; an ``OPTIONS`` that is not a preflight, or one
for a path whose endpoints have no CORS, is answered as any other ``OPTIONS`` (204 with
``Allow``), and one for an unknown path is the usual 404, without CORS fields.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._config.plan import EndpointPlan, GatewayPlan
from ._endpoint import Send, send_error
from ._errors import CorsPreflightRefused, MethodNotAllowed, RequestError
from ._observability.logs import AccessRecord
from ._rules.cors import (
    TOKEN,
    VARY_PREFLIGHT,
    Fields,
    Refused,
    preflight,
    preflight_request,
    request_origin,
    response_fields,
)


async def answer_preflight(
    plan: GatewayPlan,
    raw_path: str,
    headers: Sequence[tuple[bytes, bytes]],
    send: Send,
    record: AccessRecord | None,
) -> bool:
    """Answer an ``OPTIONS`` request if it is a CORS preflight for a path with CORS: 204
    with the CORS fields when the endpoint's policy allows it, else 403
    ``cors_preflight_refused``. False when it is not one (the caller answers)."""
    question = preflight_request(headers)
    if question is None:
        return False
    try:
        endpoint = plan.router.match(raw_path, question.method).target
    except MethodNotAllowed as exc:
        # no endpoint for that method: refused if the path's endpoints speak CORS
        route = _cors_route(plan, raw_path, exc.allow)
        if route is None:
            return False
        if record is not None:
            record.endpoint = route  # the configured path: a metrics label, never the raw one
        refusal = Refused(
            "method",
            f"no endpoint here takes {question.method}"
            if TOKEN.fullmatch(question.method)
            else "the requested method is not a valid method",
        )
        await _refuse(send, refusal, (VARY_PREFLIGHT,))
        return True
    except RequestError:
        return False  # an unknown path (404) or a bad parameter: as for any OPTIONS
    policy = endpoint.cors
    if policy is None:
        return False
    if record is not None:
        record.endpoint = endpoint.path
    answer = preflight(policy, question.origin, question.method, question.headers)
    if isinstance(answer, Refused):
        await _refuse(send, answer, (*endpoint.configured_fields, VARY_PREFLIGHT))
        return True
    await send(
        {
            "type": "http.response.start",
            "status": 204,
            "headers": [*answer.fields, *endpoint.configured_fields],
        }
    )
    await send({"type": "http.response.body", "body": b""})
    return True


async def _refuse(send: Send, refused: Refused, fields: Fields) -> None:
    error = CorsPreflightRefused(refused.message, fields={"refused": refused.refused})
    await send_error(send, error, headers=fields)


def _cors_route(plan: GatewayPlan, raw_path: str, methods: Sequence[str]) -> str | None:
    """The configured path of an endpoint with CORS at this path, for one of
    ``methods``; None if there is none."""
    for method in methods:
        try:
            endpoint = plan.router.match(raw_path, method).target
        except RequestError:
            continue
        if endpoint.cors is not None:
            return endpoint.path
    return None


def endpoint_fields(endpoint: EndpointPlan, headers: Sequence[tuple[bytes, bytes]]) -> Fields:
    """The fields every answer to this request gets: the endpoint's static ones and, for a
    request with an allowed ``Origin`` (a policy other than a wildcard one), that origin's
    CORS fields."""
    policy = endpoint.cors
    if policy is None or policy.wildcard:
        return endpoint.response_fields
    origin = request_origin(headers)
    if origin is None:
        return endpoint.response_fields
    return (*endpoint.response_fields, *response_fields(policy, origin))

"""Templates for backend paths, queries and headers (pure, no I/O).

A template is literal text with references in braces:

- ``{user_id}``: an endpoint path parameter;
- ``{query.lang}``: a client query parameter (its first value);
- ``{header.X-Tenant}``: a client request header;
- ``{jwt.sub}``, ``{jwt.org.id}``: a claim of the request's verified token, by dot path
  (endpoints with a JWT auth policy);
- ``{apikey.name}``: the name of the request's API key (endpoints with an API key policy);
- ``{body.items[0].sku}``: a value of the client's JSON body (``{body}`` alone is all of
  it), on POST, PUT and PATCH endpoints;
- ``{profile.segment}``: a value from another backend's result, after its ``select`` and
  before its other transforms (``{profile}`` alone is the whole selected value; ``[N]``
  or a digits segment indexes an array; ``[*]`` walks every element, for ``for_each``);
- ``{orders[*].product_id}`` where ``orders`` is a ``group``: the group's merged value
  (:func:`gateway._rules.collect.group_value`), read like a backend's result.

In a body template (:mod:`gateway._rules.body`) a reference may end in a conversion,
``:int``, ``:float``, ``:str`` or ``:bool`` (``{body.count:int}``); elsewhere a conversion
is a syntax error.

``{{`` and ``}}`` are literal braces. A value must be a string or a number; in a path or
query it must pass the same rules as a path parameter (not empty, ``.`` or ``..``; no
``/`` or control character) and is percent-encoded whole, so it can never add a segment,
a query or a fragment or change the host (RFC 3986 section 2.1); the octets a client
sent are given back exactly (:func:`~gateway._rules.urls.encode_value`). In a header it
must not contain a control character (RFC 9110 section 5.5).

Values from the client request (path parameters, query, headers, body) are checked when
the request arrives (:func:`gateway._call.request.check_client_values`), so a client's
mistake is a 400; ``invalid_reference`` is left for values from upstream responses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from .._errors import InvalidPathParameter
from .jsonvalue import json_kind
from .urls import TemplateError, check_param_value, encode_value, is_url_literal

WILDCARD = "*"
"""A ``[*]`` segment in a backend reference's path."""

RefKind = Literal["param", "query", "header", "backend", "jwt", "apikey", "body"]
Conversion = Literal["int", "float", "str", "bool"]
CONVERSIONS: tuple[Conversion, ...] = ("int", "float", "str", "bool")

_REF = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
# ASCII digits only, at most 9 (an index, not a number to convert at any length)
_SEGMENT = re.compile(rf"({_NAME}|[0-9]{{1,9}})((?:\[(?:[0-9]{{1,9}}|\*)\])*)")
_INDEX = re.compile(r"\[([0-9]{1,9}|\*)\]")
_CLAIM_SEGMENT = re.compile(r"[A-Za-z0-9_:-]+")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

Segment = str | int


class TemplateSyntaxError(TemplateError):
    """A template in the config is malformed."""


class UnresolvedReference(LookupError):
    """A reference cannot be filled for this request (outcome ``invalid_reference``)."""


@dataclass(frozen=True)
class Ref:
    """One ``{...}`` reference. ``kind`` is ``param`` until compiled against the endpoint."""

    kind: RefKind
    name: str
    path: tuple[Segment, ...] = ()
    text: str = ""
    index: int = -1
    """For ``backend`` references: the position of the result read: the referenced
    backend's in the endpoint, or past the backends a group's (``CollectionsPlan``)."""
    convert: Conversion | None = None
    """``:int``, ``:float``, ``:str`` or ``:bool`` after the reference (body templates)."""

    @property
    def has_wildcard(self) -> bool:
        return WILDCARD in self.path


@dataclass(frozen=True)
class Template:
    """Parsed template text: literals (``str``) and references (:class:`Ref`)."""

    text: str
    parts: tuple[str | Ref, ...]

    @property
    def refs(self) -> tuple[Ref, ...]:
        return tuple(p for p in self.parts if isinstance(p, Ref))

    @property
    def has_query(self) -> bool:
        return any(isinstance(p, str) and "?" in p for p in self.parts)

    def with_refs(self, mapper: Callable[[Ref], Ref]) -> Template:
        return Template(
            self.text, tuple(mapper(p) if isinstance(p, Ref) else p for p in self.parts)
        )


def _split_conversion(body: str, conversions: bool) -> tuple[str, Conversion | None]:
    """``body.count:int`` -> (``body.count``, ``int``). A ``:`` is part of a query
    parameter's or a claim's name unless one of the four conversions follows it; in any
    other reference it can only start a conversion.

    Raises:
        TemplateSyntaxError: an unknown conversion, or one where conversions are not allowed.
    """
    head, colon, suffix = body.rpartition(":")
    if not colon:
        return body, None
    where = f"in {{{body}}}"
    if suffix not in CONVERSIONS:
        if body.startswith(("query.", "jwt.")):
            return body, None
        raise TemplateSyntaxError(
            f"{where}: unknown conversion ':{suffix}' (use :int, :float, :str or :bool)"
        )
    if not conversions:
        raise TemplateSyntaxError(
            f"{where}: conversions (:{suffix}) apply in body templates and GraphQL variables only"
        )
    if head.rpartition(":")[2] in CONVERSIONS:
        raise TemplateSyntaxError(f"{where}: one conversion at most")
    return head, suffix


def _parse_ref(whole: str, text: str, conversions: bool = False) -> Ref:
    body, convert = _split_conversion(whole, conversions)
    ref = _parse_plain_ref(body)
    return replace(ref, text=f"{{{whole}}}", convert=convert) if convert else ref


def _parse_plain_ref(body: str) -> Ref:
    where = f"in {{{body}}}"
    if not body:
        raise TemplateSyntaxError("empty reference {}")
    head, dot, rest = body.partition(".")
    if head in ("query", "header"):
        if not rest:
            raise TemplateSyntaxError(f"{where}: name the {head} after '{head}.'")
        if head == "header":
            if not _HEADER_NAME.fullmatch(rest):
                raise TemplateSyntaxError(f"{where}: invalid header name")
            return Ref("header", rest.lower(), (), f"{{{body}}}")
        return Ref("query", rest, (), f"{{{body}}}")
    if head == "jwt":
        segments = rest.split(".") if rest else []
        if not segments or not all(_CLAIM_SEGMENT.fullmatch(seg) for seg in segments):
            raise TemplateSyntaxError(f"{where}: name a claim, like {{jwt.sub}} or {{jwt.org.id}}")
        return Ref("jwt", "jwt", tuple(segments), f"{{{body}}}")
    if head == "apikey":
        if rest != "name":
            raise TemplateSyntaxError(f"{where}: the API key reference is {{apikey.name}}")
        return Ref("apikey", "name", (), f"{{{body}}}")
    head_match = re.fullmatch(rf"({_NAME})((?:\[(?:[0-9]{{1,9}}|\*)\])*)", head)
    if head_match is None:
        raise TemplateSyntaxError(f"{where}: {head!r} is not a valid name")
    head = head_match.group(1)
    path: list[Segment] = [
        WILDCARD if index == "*" else int(index) for index in _INDEX.findall(head_match.group(2))
    ]
    if dot:
        for seg in rest.split("."):
            match = _SEGMENT.fullmatch(seg)
            if match is None:
                raise TemplateSyntaxError(
                    f"{where}: invalid path segment {seg!r} (use names, digits, [N] or [*])"
                )
            key = match.group(1)
            # "01" stays a key: only a canonical number can be an array index
            path.append(int(key) if key.isdigit() and str(int(key)) == key else key)
            for index in _INDEX.findall(match.group(2)):
                path.append(WILDCARD if index == "*" else int(index))
    kind: RefKind = "body" if head == "body" else "backend" if dot or path else "param"
    ref = Ref(kind, head, tuple(path), f"{{{body}}}")
    if sum(1 for s in ref.path if s == WILDCARD) > 1:
        raise TemplateSyntaxError(f"{where}: at most one [*] per reference")
    return ref


def parse_template(text: str, *, conversions: bool = False) -> Template:
    """Split text into literals and references; ``conversions``: references may end in
    ``:int``, ``:float``, ``:str`` or ``:bool`` (body templates).

    Raises:
        TemplateSyntaxError: an unbalanced brace or a malformed reference.
    """
    parts: list[str | Ref] = []
    literal = ""
    pos = 0
    for match in _REF.finditer(text):
        chunk = text[pos : match.start()]
        if "{" in chunk or "}" in chunk:
            raise TemplateSyntaxError("unbalanced '{' or '}' (write {{ or }} for a literal brace)")
        literal += chunk
        token = match.group(0)
        if token in ("{{", "}}"):
            literal += token[0]
        else:
            if literal:
                parts.append(literal)
                literal = ""
            parts.append(_parse_ref(match.group(1), text, conversions))
        pos = match.end()
    tail = text[pos:]
    if "{" in tail or "}" in tail:
        raise TemplateSyntaxError("unbalanced '{' or '}' (write {{ or }} for a literal brace)")
    literal += tail
    if literal:
        parts.append(literal)
    return Template(text, tuple(parts))


def parse_url_template(text: str) -> Template:
    """Parse a backend path such as ``/orders?user={user_id}&limit=5``.

    Raises:
        TemplateSyntaxError: not starting with '/', a fragment, a malformed reference, or
            literal characters that would need encoding.
    """
    if not text.startswith("/"):
        raise TemplateSyntaxError("must start with '/'")
    if "#" in text:
        raise TemplateSyntaxError("must not contain a fragment")
    template = parse_template(text)
    for part in template.parts:
        if isinstance(part, str) and not is_url_literal(part):
            raise TemplateSyntaxError(
                "has characters that must be percent-encoded (spaces, quotes, braces, ...)"
            )
    return template


# --- values --------------------------------------------------------------------------


def walk(value: Any, path: Sequence[Segment]) -> Any:
    """Follow a reference path (without wildcard) into a JSON value.

    Raises:
        UnresolvedReference: a key or index is missing.
    """
    for seg in path:
        if isinstance(value, dict):
            key = seg if type(seg) is str else str(seg)
            if key not in value:
                raise UnresolvedReference(f"{seg!r} is missing")
            value = value[key]
        elif isinstance(seg, int) and isinstance(value, list):
            if seg >= len(value):
                raise UnresolvedReference(f"index {seg} is out of range")
            value = value[seg]
        else:
            raise UnresolvedReference(f"{seg!r} is missing")
    return value


def expand(value: Any, path: Sequence[Segment]) -> list[Any]:
    """Values at a path with one ``[*]``: one per element of the array, in order.

    Raises:
        UnresolvedReference: a key is missing, or the ``[*]`` does not meet an array.
    """
    cut = list(path).index(WILDCARD)
    array = walk(value, path[:cut])
    if not isinstance(array, list):
        raise UnresolvedReference("[*] needs an array")
    tail = path[cut + 1 :]
    return [walk(item, tail) for item in array]


def scalar_text(value: Any) -> str:
    """A referenced value as text: strings as they are, numbers in JSON form.

    Raises:
        UnresolvedReference: the value is not a string or a number.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnresolvedReference(f"value is {json_kind(value)}, not a string or number")
    return str(value)


def url_value(value: Any) -> str:
    """A value for a path or query: checked like a path parameter, percent-encoded whole.

    Raises:
        UnresolvedReference: not a string/number, or unsafe in a URL.
    """
    text = scalar_text(value)
    try:
        check_param_value(text)
    except InvalidPathParameter as exc:
        raise UnresolvedReference(exc.message) from None
    return encode_value(text)


def header_value(value: Any) -> str:
    """A value for a header: no control characters (RFC 9110 section 5.5).

    Raises:
        UnresolvedReference: not a string/number, or containing a control character.
    """
    text = scalar_text(value)
    if _HEADER_CONTROL.search(text):
        raise UnresolvedReference("control characters are not allowed in a header value")
    return text


def render(template: Template, resolve: Callable[[Ref], Any], encode: Callable[[Any], str]) -> str:
    """Fill a template. ``resolve`` gives a reference's raw value; ``encode`` checks and
    encodes it for its place.

    Raises:
        UnresolvedReference: from ``resolve`` or ``encode``; the message names the reference.
    """
    out = []
    for part in template.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        try:
            out.append(encode(resolve(part)))
        except UnresolvedReference as exc:
            raise UnresolvedReference(f"{part.text}: {exc}") from None
    return "".join(out)

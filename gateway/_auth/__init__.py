"""Authentication and authorization at the edge: named policies an endpoint requires
before any rate limit or upstream call.

- :mod:`.plan`: the compiled policies (frozen values, built at load);
- :mod:`.rules`: pure rules: where a token is found (RFC 6750 section 2), the
  ``WWW-Authenticate`` challenges (section 3), roles and scopes, API key digests, the
  verified :class:`~.rules.Identity`;
- :mod:`.policy`: the adapter between a JWT policy and the token verifier;
- :mod:`.forward`: the forward auth sub-request (I/O, through the gateway's transport);
- :mod:`.gate`: running an endpoint's policies for one request, any one may pass (I/O edge).
"""

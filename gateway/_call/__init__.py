"""One backend call, from config and client request to a shaped result.

- ``context``: what the calls of one client request may take from it;
- ``request``: the upstream request, built from config and referenced values (pure);
- ``pipeline``: the ordered layers of policies around the exchange, written in one place;
- ``cache``: the two outermost layers, the backend cache and coalescing;
- ``exchange``: one upstream exchange (status, headers, body), and shaping its reply.
"""

"""CORS in a real browser: headless Chromium loads a page from one origin whose script
calls the gateway on another (another port of 127.0.0.1: another origin) with credentials
and an ``Authorization`` header, and writes what it could read into the page; the test
reads the page back (``--dump-dom``). A page of an origin the gateway does not allow must
see its fetch fail.

Chromium is Debian's ``chromium`` package, which ``scripts/test`` installs. The test fails
(it is never skipped) when Chromium is missing or cannot start.

``--dump-dom`` prints the page once it has loaded, before a ``fetch`` started by its script
has answered; ``--virtual-time-budget`` makes Chromium wait: virtual time stands still
while network requests are pending, and the page is dumped once the budget of idle
virtual time is spent.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import tempfile
import time
from typing import Any

import jwt as pyjwt
import trio
from conftest import start_gateway, start_upstream
from upstream import RecordedRequest, Reply, Upstream

SECRET = "an-hmac-secret-of-32-bytes-or-more!"
BROWSER_TIMEOUT_S = 60
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome")

# What the page's script reads, written into <pre id="out"> as JSON.
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>cors</title></head>
<body><pre id="out">pending</pre>
<script>
const gateway = %(gateway)s;
const token = %(token)s;
async function call(authorization) {
  try {
    const r = await fetch(gateway + "/api/me", {
      credentials: "include",
      headers: {"Authorization": authorization},
    });
    return {
      status: r.status,
      body: await r.json(),
      requestId: r.headers.get("X-Request-Id"),
      backends: r.headers.get("X-Gateway-Backends"),
      notExposed: r.headers.get("X-Gateway-Complete"),
    };
  } catch (e) {
    return {failed: String(e)};
  }
}
(async () => {
  const ok = await call("Bearer " + token);
  const refused = await call("Bearer not-a-token");
  document.getElementById("out").textContent = JSON.stringify({ok, refused});
})();
</script></body></html>
"""


def chromium() -> str:
    for name in CHROMIUMS:
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(
        "no Chromium found (tried " + ", ".join(CHROMIUMS) + "): run ./scripts/test, which "
        "installs Debian's chromium package, or `apt-get install -y chromium`"
    )


async def outcome_of(url: str) -> dict[str, Any]:
    """Open ``url`` in headless Chromium; what the page wrote into ``<pre id="out">``."""
    with tempfile.TemporaryDirectory() as profile:
        command = [
            chromium(),
            "--headless=new",
            "--no-sandbox",  # as root in a container there is no sandbox to have
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ]
        with trio.move_on_after(BROWSER_TIMEOUT_S - 10) as scope:
            done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
        if scope.cancelled_caught:
            raise AssertionError(f"Chromium did not finish within {BROWSER_TIMEOUT_S - 10}s")
    dom = done.stdout.decode("utf-8", "replace")
    found = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    if done.returncode != 0 or found is None:
        raise AssertionError(
            f"Chromium could not load the page (exit status {done.returncode}):\n"
            + done.stderr.decode("utf-8", "replace")[-2000:]
        )
    text = html.unescape(found.group(1))
    assert text != "pending", "the page's script did not finish before the DOM was dumped"
    outcome: dict[str, Any] = json.loads(text)
    return outcome


async def serve_page(nursery: trio.Nursery, page: dict[str, bytes]) -> Upstream:
    """A static server on 127.0.0.1:0 answering ``/`` with ``page["html"]`` (set later:
    the page needs the gateway's address, and the gateway the page's origin)."""

    async def handler(request: RecordedRequest) -> Reply:
        if request.path != "/":
            return Reply(status=404, body=b"")
        return Reply(body=page["html"], headers=[("Content-Type", "text/html; charset=utf-8")])

    return await start_upstream(nursery, handler)


async def test_a_browser_page_of_an_allowed_origin_reads_the_answer_and_another_cannot(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(BROWSER_TIMEOUT_S * 2 + 10):
        api = await start_upstream(nursery, {"/me": Reply(json={"user": "alice"})})
        page: dict[str, bytes] = {}
        allowed = await serve_page(nursery, page)
        other = await serve_page(nursery, page)
        assert allowed.url != other.url  # two ports of 127.0.0.1: two origins
        gw = await start_gateway(
            nursery,
            {
                "version": 1,
                "upstreams": {"api": {"url": api.url}},
                "auth": {"users": {"jwt": {"secret": SECRET, "algorithms": ["HS256"]}}},
                "defaults": {
                    "cors": {
                        "allow_origins": [allowed.url],
                        "allow_headers": ["Authorization"],
                        "expose_headers": ["X-Request-Id", "X-Gateway-Backends"],
                        "allow_credentials": True,
                        "max_age": "10m",
                    }
                },
                "endpoints": [
                    {
                        "path": "/api/me",
                        "auth": "users",
                        "backends": [{"name": "me", "upstream": "api", "path": "/me"}],
                    }
                ],
            },
        )
        token = pyjwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 300}, SECRET, algorithm="HS256"
        )
        page["html"] = (PAGE % {"gateway": json.dumps(gw.url), "token": json.dumps(token)}).encode()

        seen = await outcome_of(allowed.url + "/")
        ok = seen["ok"]
        assert ok["status"] == 200, seen
        assert ok["body"] == {"user": "alice"}
        assert ok["backends"] == "me=ok"
        # the exposed X-Request-Id is the one the gateway gave the call it made
        assert [r.headers["x-request-id"] for r in api.requests] == [ok["requestId"]]
        assert ok["notExposed"] is None  # not in expose_headers: hidden from the page
        # an error's body is readable too: the 401 carries the CORS fields
        assert seen["refused"]["status"] == 401, seen
        assert seen["refused"]["body"]["error"]["code"] == "invalid_token"

        blocked = await outcome_of(other.url + "/")
        for call in ("ok", "refused"):
            assert blocked[call] == {"failed": "TypeError: Failed to fetch"}, blocked
        # the preflight was refused, so the browser never sent the calls themselves
        assert len(api.requests) == 1


async def test_chromium_runs(nursery: trio.Nursery) -> None:
    """The browser test cannot pass vacuously: Chromium starts and runs a script."""
    with trio.fail_after(BROWSER_TIMEOUT_S):
        page = {
            "html": b'<pre id="out">pending</pre><script>'
            b"setTimeout(() => { document.getElementById('out').textContent = "
            b"JSON.stringify({ran: navigator.userAgent.includes('Chrome')}); }, 200);"
            b"</script>"
        }
        server = await serve_page(nursery, page)
        assert await outcome_of(server.url + "/") == {"ran": True}

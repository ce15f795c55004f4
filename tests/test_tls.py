"""TLS: HTTP/2 over TLS to clients, client certificates both ways, certificates on reload.

Certificates come from ``trustme``; servers and clients are real, on loopback port 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import hypercorn.config
import pytest
import trio
import trustme
from conftest import backend_config, recorder, simple_config, start_gateway, start_upstream
from upstream import RecordedRequest, Reply, Upstream, serve_upstream

from gateway import (
    ConfigError,
    GatewayApp,
    create_app,
    hypercorn_config,
    load_config,
    serve_app,
)
from gateway._server import reload_on_sighup


def write_pair(cert: trustme.LeafCert, directory: Path, stem: str) -> tuple[str, str]:
    """``cert`` as a PEM chain file and a PEM key file; their paths."""
    cert_file, key_file = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_file))
    return str(cert_file), str(key_file)


async def test_an_upstream_requiring_a_client_certificate_is_reached_with_client_cert(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ca.configure_trust(server_ctx)
    ca_file = tmp_path / "ca.pem"
    server_ca.cert_pem.write_to_path(str(ca_file))
    cert_file, key_file = write_pair(client_ca.issue_cert("gateway.test"), tmp_path, "client")
    with trio.fail_after(10):
        up = await nursery.start(
            partial(serve_upstream, {"/x": Reply(json={"mtls": True})}, ssl_context=server_ctx)
        )
        config = simple_config(
            {"with": up, "without": up},
            [backend_config("a", "with", "/x"), backend_config("b", "without", "/x", group="b")],
        )
        # the same server under another name, so the two upstreams get pools of their own
        config["upstreams"]["without"]["url"] = up.url.replace("127.0.0.1", "localhost")
        config["upstreams"]["with"].update(
            ca_file=str(ca_file), client_cert=cert_file, client_key=key_file
        )
        config["upstreams"]["without"]["ca_file"] = str(ca_file)
        gw = await start_gateway(nursery, config)
        r = await gw.get("/api/1")
        assert r.headers["x-gateway-backends"] == "a=ok, b=unreachable"
        assert r.json() == {"mtls": True}


@dataclass
class MutualTLSUpstream:
    """One TLS server requiring client certificates from ``client_ca``; every request it
    answers is recorded, with the client certificate and connection it came on."""

    up: Upstream
    seen: list[RecordedRequest]
    ca_file: str  # the CA of the server's certificate
    client_ca: trustme.CA


async def start_mutual_tls_upstream(nursery: trio.Nursery, tmp_path: Path) -> MutualTLSUpstream:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ca.configure_trust(server_ctx)
    ca_file = tmp_path / "ca.pem"
    server_ca.cert_pem.write_to_path(str(ca_file))
    seen, handler = recorder(
        lambda req: Reply(json={"cert": req.client_cert_name, "connection": req.connection_id})
    )
    up = await nursery.start(partial(serve_upstream, handler, ssl_context=server_ctx))
    return MutualTLSUpstream(up, seen, str(ca_file), client_ca)


def identity_config(server: MutualTLSUpstream, certs: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """An upstream per entry of ``certs`` (name: certificate and key files), all on the
    server's one origin; ``/agg/NAME`` and ``/pass/NAME`` (passthrough) call each."""
    return {
        "version": 1,
        "upstreams": {
            name: {
                "url": f"{server.up.url}/{name}",
                "ca_file": server.ca_file,
                "client_cert": cert_file,
                "client_key": key_file,
            }
            for name, (cert_file, key_file) in certs.items()
        },
        "endpoints": [
            endpoint
            for name in certs
            for endpoint in (
                {"path": f"/agg/{name}", "backends": [backend_config("b", name, "/x")]},
                {
                    "path": f"/pass/{name}",
                    "passthrough": True,
                    "backends": [backend_config("b", name, "/x")],
                },
            )
        ],
    }


async def test_upstreams_on_one_origin_with_different_client_certificates_never_share_a_connection(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        server = await start_mutual_tls_upstream(nursery, tmp_path)
        ca = server.client_ca
        alice = write_pair(ca.issue_cert("alice.test", common_name="alice"), tmp_path, "alice")
        bob = write_pair(ca.issue_cert("bob.test", common_name="bob"), tmp_path, "bob")
        # alice_too presents alice's certificate: it shares alice's pool
        certs = {"alice": alice, "bob": bob, "alice_too": alice}
        gw = await start_gateway(nursery, identity_config(server, certs))
        expected = {"alice": "alice", "bob": "bob", "alice_too": "alice"}
        connections: dict[str, set[int]] = {"alice": set(), "bob": set()}
        for _ in range(5):
            for name in ("alice", "bob", "alice_too"):  # one after the other: keep-alive reuse
                r = await gw.get(f"/agg/{name}")
                assert r.headers["x-gateway-backends"] == "b=ok"
                assert r.json()["cert"] == expected[name]
                connections[expected[name]].add(r.json()["connection"])
        # one kept-alive connection per certificate, and never the other's
        assert len(connections["alice"]) == len(connections["bob"]) == 1
        assert not connections["alice"] & connections["bob"]

        # concurrent calls, aggregated and passthrough (httpx) interleaved
        results: list[tuple[str, str, int]] = []

        async def call(path: str, name: str) -> None:
            r = await gw.get(f"/{path}/{name}")
            assert r.status_code == 200
            results.append((name, r.json()["cert"], r.json()["connection"]))

        async with trio.open_nursery() as calls:
            for _ in range(10):
                for name in expected:
                    calls.start_soon(call, "agg", name)
                    calls.start_soon(call, "pass", name)
        assert len(results) == 60
        for name, cert, connection in results:
            assert cert == expected[name]
            connections[cert].add(connection)
        assert not connections["alice"] & connections["bob"]
        # what the upstream saw: every request came with its own upstream's certificate
        assert len(server.seen) == 75
        for req in server.seen:
            assert req.client_cert_name == expected[req.path.split("/")[1]]

        # two pools on the one origin, told apart by their certificate
        shown = (await gw.get("/__gateway/upstreams")).json()
        origin = server.up.url
        assert shown["alice"]["pool"]["origin"] == shown["bob"]["pool"]["origin"] == origin
        assert shown["alice"]["pool"]["client_cert"] == alice[0]
        assert shown["bob"]["pool"]["client_cert"] == bob[0]
        assert shown["alice_too"]["pool"] == shown["alice"]["pool"]


async def test_a_reload_that_changes_one_client_certificate_keeps_the_other_pool(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        server = await start_mutual_tls_upstream(nursery, tmp_path)
        ca = server.client_ca
        alice = write_pair(ca.issue_cert("alice.test", common_name="alice"), tmp_path, "alice")
        bob = write_pair(ca.issue_cert("bob.test", common_name="bob"), tmp_path, "bob")
        carol = write_pair(ca.issue_cert("carol.test", common_name="carol"), tmp_path, "carol")
        config_file = tmp_path / "gw.yaml"
        config_file.write_text(json.dumps(identity_config(server, {"alice": alice, "bob": bob})))
        app = create_app(load_config(str(config_file)))
        [url] = await nursery.start(
            partial(serve_app, app, hypercorn_config(app.plan, bind="127.0.0.1:0"))
        )
        async with httpx.AsyncClient(trust_env=False) as client:

            async def seen_by(name: str) -> tuple[str, int]:
                answer = (await client.get(f"{url}/agg/{name}")).json()
                return answer["cert"], answer["connection"]

            alice_before = await seen_by("alice")
            assert (await seen_by("bob"))[0] == "bob"
            # bob now presents carol's certificate: his pool is replaced, alice's is kept
            config_file.write_text(
                json.dumps(identity_config(server, {"alice": alice, "bob": carol}))
            )
            assert app.reload()
            assert await seen_by("bob") == ("carol", 3)
            assert await seen_by("alice") == alice_before
            assert server.up.connections_total == 3
            # the pool of bob's old certificate is gone with its connection
            assert sorted(s.client_cert or "" for s in app.transport.statistics()) == [
                alice[0],
                carol[0],
            ]


def test_upstreams_on_one_origin_may_present_different_client_certificates(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    alice = write_pair(ca.issue_cert("alice.test"), tmp_path, "alice")
    bob = write_pair(ca.issue_cert("bob.test"), tmp_path, "bob")
    upstreams = {
        name: {"url": f"https://a.test/{name}", "client_cert": cert, "client_key": key}
        for name, (cert, key) in (("alice", alice), ("bob", bob))
    }
    plan = load_config("gw.yaml", {}, text=json.dumps({"version": 1, "upstreams": upstreams}))
    keys = {name: up.base.key for name, up in plan.upstreams.items()}
    assert keys == {
        "alice": ("https", "a.test", 443, alice),
        "bob": ("https", "a.test", 443, bob),
    }


def test_upstreams_sharing_a_pool_must_agree_on_its_settings(tmp_path: Path) -> None:
    ca = trustme.CA()
    alice = write_pair(ca.issue_cert("alice.test"), tmp_path, "alice")
    bob = write_pair(ca.issue_cert("bob.test"), tmp_path, "bob")

    def upstream(cert: tuple[str, str], **settings: Any) -> dict[str, Any]:
        return {"url": "https://a.test", "client_cert": cert[0], "client_key": cert[1], **settings}

    config = {
        "version": 1,
        "upstreams": {
            "a": upstream(alice, max_connections=10),
            "b": upstream(bob, max_connections=20),  # another pool: may differ
            "c": upstream(alice, max_connections=20),  # a's pool: may not
        },
    }
    assert problems_of(config) == [
        f"gw.yaml: upstreams.c: shares its https://a.test:443 pool (client certificate "
        f"{alice[0]}) with upstream 'a' but sets different max_connections, idle_timeout, "
        "ca_file or host_header (one pool per origin and client certificate)"
    ]


def problems_of(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config("gw.yaml", {}, text=json.dumps(config))
    return [str(p) for p in info.value.problems]


def test_a_client_key_without_its_certificate_is_a_config_error(tmp_path: Path) -> None:
    config = {"version": 1, "upstreams": {"u": {"url": "https://a.test", "client_key": "k"}}}
    assert problems_of(config) == ["gw.yaml: upstreams.u.client_cert: required with client_key"]


def test_an_unreadable_client_certificate_is_a_config_error_naming_the_file(
    tmp_path: Path,
) -> None:
    missing = str(tmp_path / "missing.pem")
    _, key_file = write_pair(trustme.CA().issue_cert("a.test"), tmp_path, "c")
    config = {
        "version": 1,
        "upstreams": {
            "u": {"url": "https://a.test", "client_cert": missing, "client_key": key_file}
        },
    }
    assert problems_of(config) == [
        f"gw.yaml: upstreams.u.client_cert: cannot read {missing}: No such file or directory"
    ]


def test_a_client_certificate_with_the_wrong_key_is_a_config_error(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert_file, _ = write_pair(ca.issue_cert("a.test"), tmp_path, "a")
    _, other_key = write_pair(ca.issue_cert("b.test"), tmp_path, "b")
    config = {
        "version": 1,
        "upstreams": {
            "u": {"url": "https://a.test", "client_cert": cert_file, "client_key": other_key}
        },
    }
    [problem] = problems_of(config)
    assert problem.startswith(f"gw.yaml: upstreams.u.client_cert: {cert_file} and {other_key}")


def test_a_client_certificate_for_an_http_upstream_is_a_config_error(tmp_path: Path) -> None:
    config = {
        "version": 1,
        "upstreams": {"u": {"url": "http://a.test", "client_cert": "c", "client_key": "k"}},
    }
    assert problems_of(config) == ["gw.yaml: upstreams.u.client_cert: only used with https"]


# --- TLS to clients ----------------------------------------------------------------------


@dataclass
class TLSGateway:
    url: str
    host: str
    port: int
    app: GatewayApp
    config: hypercorn.config.Config


async def start_tls_gateway(
    nursery: trio.Nursery, config: dict[str, Any], directory: Path
) -> TLSGateway:
    """Serve ``config`` (written to a file, so that a reload reads it again) on port 0."""
    config_file = directory / "gw.yaml"
    config_file.write_text(json.dumps(config))
    plan = load_config(str(config_file))
    app = create_app(plan)
    hc = hypercorn_config(plan, bind="127.0.0.1:0")
    [url] = await nursery.start(partial(serve_app, app, hc))
    assert url.startswith("https://")
    host, port = url.removeprefix("https://").rsplit(":", 1)
    return TLSGateway(url, host, int(port), app, hc)


def tls_config(cert_file: str, key_file: str, **tls: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "server": {"tls": {"cert_file": cert_file, "key_file": key_file, **tls}},
    }


def client_context(ca: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


async def test_clients_get_http2_over_tls_through_alpn(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert_file, key_file = write_pair(ca.issue_cert("127.0.0.1"), tmp_path, "server")
    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={"over": "h2"})})
        config = {
            **simple_config({"u": up}, [backend_config("a", "u", "/x")]),
            **tls_config(cert_file, key_file),
        }
        gw = await start_tls_gateway(nursery, config, tmp_path)
        async with httpx.AsyncClient(verify=client_context(ca), http2=True) as client:
            r = await client.get(gw.url + "/api/1")
            assert (r.http_version, r.status_code, r.json()) == ("HTTP/2", 200, {"over": "h2"})
        async with httpx.AsyncClient(verify=client_context(ca)) as client:
            r = await client.get(gw.url + "/api/1")
            assert (r.http_version, r.status_code) == ("HTTP/1.1", 200)


async def test_curl_negotiates_http2_with_the_gateway(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # scripts/test installs curl where it is missing: a skip would hide this check
    assert shutil.which("curl") is not None, "curl is not installed (scripts/test installs it)"
    ca = trustme.CA()
    cert_file, key_file = write_pair(ca.issue_cert("127.0.0.1"), tmp_path, "server")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with trio.fail_after(10):
        gw = await start_tls_gateway(nursery, tls_config(cert_file, key_file), tmp_path)
        done = await trio.run_process(
            [
                "curl",
                "-sS",
                "--http2",
                "--cacert",
                str(ca_file),
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                gw.url + "/__gateway/health",
            ],
            capture_stdout=True,
        )
        assert done.stdout == b"2 200"


async def test_with_require_client_cert_a_client_without_a_certificate_is_refused(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    cert_file, key_file = write_pair(server_ca.issue_cert("127.0.0.1"), tmp_path, "server")
    client_ca_file = tmp_path / "clients.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    config = tls_config(
        cert_file, key_file, client_ca_file=str(client_ca_file), require_client_cert=True
    )
    with trio.fail_after(10):
        gw = await start_tls_gateway(nursery, config, tmp_path)
        health = gw.url + "/__gateway/health"
        async with httpx.AsyncClient(verify=client_context(server_ca)) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(health)
        # a certificate from a CA the gateway was not told to trust is refused too
        stranger = client_context(server_ca, trustme.CA().issue_cert("stranger.test"))
        async with httpx.AsyncClient(verify=stranger) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(health)
        known = client_context(server_ca, client_ca.issue_cert("client.test"))
        async with httpx.AsyncClient(verify=known, http2=True) as client:
            r = await client.get(health)
            assert (r.status_code, r.http_version) == (200, "HTTP/2")


async def test_min_version_refuses_older_clients(nursery: trio.Nursery, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert_file, key_file = write_pair(ca.issue_cert("127.0.0.1"), tmp_path, "server")
    config = tls_config(cert_file, key_file, min_version="TLSv1.3")
    with trio.fail_after(10):
        gw = await start_tls_gateway(nursery, config, tmp_path)
        old = client_context(ca)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        async with httpx.AsyncClient(verify=old) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(gw.url + "/__gateway/health")
        async with httpx.AsyncClient(verify=client_context(ca)) as client:
            assert (await client.get(gw.url + "/__gateway/health")).status_code == 200


async def served_subject(port: int, ctx: ssl.SSLContext) -> str:
    """The common name of the certificate the gateway presents in a new handshake."""
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=ctx)
    async with stream:
        await stream.do_handshake()
        peer = stream.getpeercert()
        assert peer is not None
        return dict(pair[0] for pair in peer["subject"])["commonName"]


async def test_after_sighup_a_renewed_certificate_is_served(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    cert_file, key_file = write_pair(ca.issue_cert("127.0.0.1", common_name="first"), tmp_path, "s")
    ctx = client_context(ca)
    with trio.fail_after(10):
        gw = await start_tls_gateway(nursery, tls_config(cert_file, key_file), tmp_path)
        await nursery.start(reload_on_sighup, gw.app, gw.config)
        assert await served_subject(gw.port, ctx) == "first"
        # renewal: new files at the same paths, the config unchanged
        write_pair(ca.issue_cert("127.0.0.1", common_name="second"), tmp_path, "s")
        assert await served_subject(gw.port, ctx) == "first"  # nothing is read until told
        reloaded = trio.Event()
        reload_config = gw.app.reload

        def reload_then_tell() -> bool:
            # the watcher loads the certificate right after, before it next yields
            accepted = reload_config()
            reloaded.set()
            return accepted

        monkeypatch.setattr(gw.app, "reload", reload_then_tell)
        os.kill(os.getpid(), signal.SIGHUP)
        await reloaded.wait()
        assert await served_subject(gw.port, ctx) == "second"


async def test_an_unreadable_key_stops_serve_with_status_2_naming_file_and_path(
    tmp_path: Path,
) -> None:
    cert_file, _ = write_pair(trustme.CA().issue_cert("127.0.0.1"), tmp_path, "server")
    missing = str(tmp_path / "missing.key")
    config_file = tmp_path / "gw.yaml"
    config_file.write_text(json.dumps(tls_config(cert_file, missing)))
    with trio.fail_after(20):
        done = await trio.run_process(
            [sys.executable, "-m", "gateway", "serve", str(config_file), "--bind", "127.0.0.1:0"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        f"{config_file}: server.tls.key_file: cannot read {missing}: No such file or directory"
    ]


def test_require_client_cert_needs_client_ca_file(tmp_path: Path) -> None:
    cert_file, key_file = write_pair(trustme.CA().issue_cert("a.test"), tmp_path, "server")
    assert problems_of(tls_config(cert_file, key_file, require_client_cert=True)) == [
        "gw.yaml: server.tls.client_ca_file: required with require_client_cert"
    ]


async def test_gateway_serve_reloads_its_certificate_on_sighup(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    import re
    import subprocess

    ca = trustme.CA()
    cert_file, key_file = write_pair(ca.issue_cert("127.0.0.1", common_name="first"), tmp_path, "s")
    config_file = tmp_path / "gw.yaml"
    config_file.write_text(json.dumps(tls_config(cert_file, key_file)))
    cmd = [sys.executable, "-m", "gateway", "serve", str(config_file), "--bind", "127.0.0.1:0"]
    cmd += ["--log-format", "text"]
    with trio.fail_after(20):
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
            )
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            out = b""
            while not (match := re.search(rb"serving .*https://127\.0\.0\.1:(\d+)", out)):
                data = await proc.stdout.receive_some(4096)
                assert data, f"gateway exited before serving: {out!r}"
                out += data
            port = int(match.group(1))
            ctx = client_context(ca)
            assert await served_subject(port, ctx) == "first"
            write_pair(ca.issue_cert("127.0.0.1", common_name="second"), tmp_path, "s")
            proc.send_signal(signal.SIGHUP)
            logged = b""
            while b"certificate reloaded" not in logged:
                data = await proc.stderr.receive_some(4096)
                assert data, f"gateway exited: {logged!r}"
                logged += data
            assert await served_subject(port, ctx) == "second"
        finally:
            proc.terminate()

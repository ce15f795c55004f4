"""TLS: HTTP/2 over TLS to clients, client certificates both ways, certificates on reload.

Certificates come from ``trustme``; servers and clients are real, on loopback port 0.
"""

from __future__ import annotations

import ssl
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from conftest import backend_config, simple_config, start_gateway
from upstream import Reply, serve_upstream

from gateway import ConfigError, load_config


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


def problems_of(config: dict[str, Any]) -> list[str]:
    import json

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

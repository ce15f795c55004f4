"""Request ids, trace context and access logs, seen by real upstreams and real log lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from conftest import backend_config, recorder, simple_config, start_gateway, start_upstream
from upstream import RecordedRequest, Reply

from gateway._observability.logs import configure_logging


def path_recorder() -> tuple[list[RecordedRequest], Any]:
    """Answers ``{"p": path}``, or 500 for ``/bad``."""
    return recorder(
        lambda req: Reply(json={"p": req.path}, status=500 if req.path == "/bad" else 200)
    )


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    configure_logging("json", "info")
    yield lambda: [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    gateway_logger = logging.getLogger("gateway")
    for handler in list(gateway_logger.handlers):
        gateway_logger.removeHandler(handler)
    gateway_logger.propagate = True


async def test_a_sane_request_id_is_kept_and_sent_to_every_upstream(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = path_recorder()
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            simple_config(
                {"u": up},
                [backend_config("a", "u", "/a"), backend_config("b", "u", "/b", group="b")],
            ),
        )
        r = await gw.get("/api/1", headers={"X-Request-Id": "req-42.a:b"})
        assert r.headers["x-request-id"] == "req-42.a:b"
        assert [req.headers["x-request-id"] for req in seen] == ["req-42.a:b"] * 2


async def test_an_insane_request_id_is_replaced_and_errors_carry_it(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = path_recorder()
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery, simple_config({"u": up}, [backend_config("a", "u", "/bad", required=True)])
        )
        r = await gw.get("/api/1", headers={"X-Request-Id": "has space; and <script>"})
        generated = r.headers["x-request-id"]
        assert len(generated) == 32 and generated.isalnum()
        assert seen[-1].headers["x-request-id"] == generated
        assert r.status_code == 502
        assert r.json()["error"]["request_id"] == generated
        r = await gw.get("/nowhere")
        assert r.json()["error"]["request_id"] == r.headers["x-request-id"]


async def test_a_trace_continues_with_a_new_span_per_backend_call(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        seen, handler = path_recorder()
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            simple_config(
                {"u": up},
                [backend_config("a", "u", "/a"), backend_config("b", "u", "/b", group="b")],
            ),
        )
        trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        await gw.get(
            "/api/1",
            headers={"traceparent": f"00-{trace_id}-{parent}-01", "tracestate": "vendor=x"},
        )
        parts = [req.headers["traceparent"].split("-") for req in seen]
        assert [p[1] for p in parts] == [trace_id, trace_id]
        spans = {p[2] for p in parts}
        assert len(spans) == 2 and parent not in spans
        assert all(p[3] == "01" for p in parts)
        assert all(req.headers["tracestate"] == "vendor=x" for req in seen)

        seen.clear()
        await gw.get("/api/1", headers={"traceparent": "garbage", "tracestate": "vendor=x"})
        parts = [req.headers["traceparent"].split("-") for req in seen]
        assert parts[0][1] == parts[1][1] != trace_id  # one new trace for the request
        assert all("tracestate" not in req.headers for req in seen)


async def test_one_access_line_per_request_with_backends_and_no_secret(
    nursery: trio.Nursery, json_logs: Any
) -> None:
    secret = "Bearer very-secret"
    with trio.fail_after(10):
        _, handler = path_recorder()
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up}, [backend_config("a", "u", "/a"), backend_config("bad", "u", "/bad")]
        )
        config["upstreams"]["u"]["headers"] = {"Authorization": secret}
        gw = await start_gateway(nursery, config)
        await gw.get("/api/7", headers={"X-Request-Id": "r1", "Authorization": "client-secret"})
        await gw.get("/nope", headers={"X-Request-Id": "r2"})
        # the line is written when the server's request task ends, just after the client
        # has the last byte
        logs: list[Any] = []
        while len([line for line in logs if line["logger"] == "gateway.access"]) < 2:
            await trio.sleep(0.01)
            logs += json_logs()
    lines = [line for line in logs if line["logger"] == "gateway.access"]
    assert [line["request_id"] for line in lines] == ["r1", "r2"]
    first, second = lines
    assert first["status"] == 200
    assert first["method"] == "GET"
    assert first["path"] == "/api/7"
    assert first["endpoint"] == "/api/{id}"
    assert first["client"] == "127.0.0.1"
    assert first["backends"]["a"]["outcome"] == "ok"
    assert first["backends"]["bad"]["outcome"] == "http_500"
    assert first["duration_ms"] >= first["backends"]["a"]["duration_ms"] >= 0
    assert "time" in first
    assert second["status"] == 404 and second["endpoint"] is None
    text = json.dumps(lines)
    assert "very-secret" not in text and "client-secret" not in text


async def test_every_access_line_names_the_believed_client_behind_a_trusted_proxy(
    nursery: trio.Nursery, json_logs: Any
) -> None:
    """Whatever the outcome (framing and limit refusals, admin routes, 403, 404, 405,
    429, passthrough, aggregated), the line's client is the one the trusted proxy
    forwarded, never the proxy."""
    client = "203.0.113.7"
    with trio.fail_after(20):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        config["server"] = {
            "trusted_proxies": ["127.0.0.1"],
            "admin_allow": ["10.0.0.0/8"],  # the private routes refuse the test client
            "max_url_length": 256,
        }
        config["endpoints"] += [
            {
                "path": "/limited/{id}",
                "rate_limit": {"rate": "1/h", "key": "ip"},
                "backends": [backend_config("a", "u", "/x")],
            },
            {
                "path": "/files/{n}",
                "passthrough": True,
                "backends": [backend_config("f", "u", "/x")],
            },
        ]
        gw = await start_gateway(nursery, config)
        requests = {
            "aggregated": ("GET", "/api/1", 200),
            "not-found": ("GET", "/nope", 404),
            "wrong-method": ("DELETE", "/api/1", 405),
            "limited": ("GET", "/limited/1", 200),
            "rate-limited": ("GET", "/limited/1", 429),
            "health": ("GET", "/__gateway/health", 200),
            "admin-forbidden": ("GET", "/__gateway/config", 403),
            "admin-unknown": ("POST", "/__gateway/health", 405),
            "passthrough": ("GET", "/files/a", 200),
            "url-too-long": ("GET", "/api/" + "x" * 300, 414),
        }
        for request_id, (method, path, status) in requests.items():
            headers = {"X-Forwarded-For": client, "X-Request-Id": request_id}
            response = await gw.request(method, path, headers=headers)
            assert response.status_code == status, request_id
        # refused before routing: Content-Length together with Transfer-Encoding
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(
                b"POST /api/1 HTTP/1.1\r\nHost: x\r\n"
                + f"X-Forwarded-For: {client}\r\nX-Request-Id: framing\r\n".encode()
                + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            answer = b""
            while data := await stream.receive_some(65536):
                answer += data
        assert answer.startswith(b"HTTP/1.1 400 ")
        logs: list[Any] = []
        while len([line for line in logs if line["logger"] == "gateway.access"]) < 11:
            await trio.sleep(0.01)
            logs += json_logs()
    clients = {
        line["request_id"]: line["client"] for line in logs if line["logger"] == "gateway.access"
    }
    assert clients == dict.fromkeys([*requests, "framing"], client)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus exposition text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        sample, value = line.rsplit(" ", 1)
        sample_name, _, label_text = sample.partition("{")
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if sample_name == name and got == want:
            return float(value)
    return 0.0


async def test_metrics_count_requests_backends_and_connections(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        _, handler = path_recorder()
        up = await start_upstream(nursery, handler)
        gw = await start_gateway(
            nursery,
            simple_config(
                {"u": up}, [backend_config("a", "u", "/a"), backend_config("bad", "u", "/bad")]
            ),
        )
        before = (await gw.get("/__gateway/metrics")).text
        for i in range(5):
            assert (await gw.get(f"/api/{i}")).status_code == 200
        await gw.get("/nothing")
        r = await gw.get("/__gateway/metrics")
        assert r.headers["content-type"].startswith("text/plain")
        after = r.text

        def delta(name: str, **labels: str) -> float:
            return metric(after, name, **labels) - metric(before, name, **labels)

        assert (
            delta("gateway_requests_total", endpoint="/api/{id}", method="GET", status="200") == 5
        )
        assert delta("gateway_requests_total", endpoint="none", method="GET", status="404") == 1
        assert delta("gateway_request_duration_seconds_count", endpoint="/api/{id}") == 5
        assert (
            delta(
                "gateway_backend_duration_seconds_count",
                endpoint="/api/{id}",
                backend="bad",
                outcome="http_500",
            )
            == 5
        )
        assert (
            metric(
                after, "gateway_upstream_connections", origin=up.url, client_cert="", state="open"
            )
            >= 1
        )
        assert metric(after, "gateway_requests_in_flight") >= 1  # the scrape itself


async def test_reload_swaps_the_config_keeps_unchanged_pools_and_refuses_a_bad_one(
    nursery: trio.Nursery, tmp_path: Any
) -> None:
    from conftest import config_text

    from gateway import create_app, hypercorn_config, load_config, serve_app

    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={"v": 1}), "/y": Reply(json={"v": 2})})
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        config["upstreams"]["u"]["headers"] = {"Authorization": "Bearer hunter2"}
        file = tmp_path / "g.yaml"
        file.write_text(config_text(config))
        app = create_app(load_config(str(file)))
        binds = await nursery.start(
            partial(serve_app, app, hypercorn_config(app.plan, bind="127.0.0.1:0"))
        )
        async with httpx.AsyncClient(trust_env=False) as client:
            url = binds[0]
            assert (await client.get(url + "/api/1")).json() == {"v": 1}
            before = app.transport.statistics()

            config["endpoints"].append(
                {"path": "/new", "backends": [backend_config("b", "u", "/y")]}
            )
            file.write_text(config_text(config))
            assert app.reload()
            assert (await client.get(url + "/new")).json() == {"v": 2}
            assert (await client.get(url + "/api/1")).json() == {"v": 1}
            assert up.connections_total == 1  # the unchanged upstream kept its connection
            assert app.transport.statistics()[0].connections_opened == before[0].connections_opened

            file.write_text("version: 1\nendpoints: [{path: /broken}]\n")
            assert not app.reload()
            assert (await client.get(url + "/new")).json() == {"v": 2}  # still the old config

            shown = (await client.get(url + "/__gateway/config")).json()
            assert shown["file"] == str(file)
            assert shown["config"]["upstreams"]["u"]["headers"] == {"Authorization": "***"}
            assert "hunter2" not in json.dumps(shown)
            assert shown["loaded_at"].endswith("+00:00")


RESTART_ONLY_CHANGES = {
    "bind": "127.0.0.1:1",
    "workers": 4,
    "backlog": 50,
    "admin_bind": "127.0.0.1:0",
    "log_format": "text",
    "log_level": "debug",
}


async def test_reload_keeps_settings_that_need_a_restart_and_says_which(
    nursery: trio.Nursery, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from conftest import config_text

    from gateway import create_app, hypercorn_config, load_config, serve_app

    with trio.fail_after(10):
        up = await start_upstream(nursery, {"/x": Reply(json={"v": 1})})
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        file = tmp_path / "g.yaml"
        file.write_text(config_text(config))
        app = create_app(load_config(str(file)))
        listener = hypercorn_config(app.plan, bind="127.0.0.1:0")
        binds = await nursery.start(partial(serve_app, app, listener))
        running = app.plan.config

        config["server"] = {
            **RESTART_ONLY_CHANGES,
            # applied by the reload
            "graceful_timeout": "7s",
            "max_header_size": "32KiB",
            "max_url_length": 4096,
            "trusted_proxies": ["10.0.0.0/8"],
            "drain_delay": "1s",
        }
        config["state"] = {"key_prefix": "elsewhere"}
        config["tracing"] = {"otlp_endpoint": "http://127.0.0.1:9/v1/traces"}
        file.write_text(config_text(config))
        with caplog.at_level(logging.WARNING, logger="gateway"):
            assert app.reload()
        assert [r.getMessage() for r in caplog.records if "restart" in r.getMessage()] == [
            f"server.{name}: changes take effect on restart; the current value is kept"
            for name in RESTART_ONLY_CHANGES
        ] + [
            f"{name}: changes take effect on restart; the current value is kept"
            for name in ("state", "tracing")
        ]
        assert app.exporter is None

        async with httpx.AsyncClient(trust_env=False) as client:
            shown = (await client.get(binds[0] + "/__gateway/config")).json()["config"]
        for name in RESTART_ONLY_CHANGES:
            assert shown["server"][name] == getattr(running.server, name), name
        assert shown["state"] == running.state.model_dump(mode="json")
        assert shown["tracing"] is None
        assert shown["server"]["graceful_timeout"] == 7.0
        assert shown["server"]["max_header_size"] == 32 * 1024
        assert shown["server"]["max_url_length"] == 4096
        assert shown["server"]["trusted_proxies"] == ["10.0.0.0/8"]
        assert shown["server"]["drain_delay"] == 1.0
        # the serving listener's settings that hypercorn reads live
        assert listener.graceful_timeout == 7.0
        assert listener.h11_max_incomplete_size == 32 * 1024
        assert app.admin_listener is None


async def test_drain_delay_is_the_one_in_effect_when_the_signal_arrives(tmp_path: Any) -> None:
    from conftest import config_text

    from gateway import create_app, load_config
    from gateway._server import drain_on_stop

    with trio.fail_after(10):
        file = tmp_path / "g.yaml"
        file.write_text(config_text({"version": 1}))
        app = create_app(load_config(str(file)))
        stop = trio.Event()
        trigger = drain_on_stop(app, stop)
        file.write_text(config_text({"version": 1, "server": {"drain_delay": "300ms"}}))
        assert app.reload()
        done = trio.Event()
        async with trio.open_nursery() as nursery:

            async def run_trigger() -> None:
                await trigger()
                done.set()

            nursery.start_soon(run_trigger)
            signalled_at = trio.current_time()
            stop.set()  # the first SIGTERM
            await done.wait()
        assert app.draining
        assert trio.current_time() - signalled_at >= 0.3


def _server_config(**server: Any) -> Any:
    from gateway import GatewayConfig

    return GatewayConfig.model_validate({"version": 1, "server": server})


def test_turning_tls_on_or_off_waits_for_a_restart_but_new_certificate_files_apply() -> None:
    from gateway._config.reload import keep_restart_only

    plain = _server_config()
    tls = _server_config(tls={"cert_file": "a.pem", "key_file": "a.key"})
    renewed = _server_config(tls={"cert_file": "b.pem", "key_file": "b.key"})
    assert keep_restart_only(plain, tls, live_listener=True) == (plain, ("server.tls",))
    assert keep_restart_only(tls, plain, live_listener=True) == (tls, ("server.tls",))
    assert keep_restart_only(tls, renewed, live_listener=True) == (renewed, ())


def test_listener_settings_wait_for_a_restart_when_the_listener_is_not_known() -> None:
    from gateway._config.reload import keep_restart_only

    running = _server_config()
    loaded = _server_config(graceful_timeout="9s", max_header_size="64KiB", body_timeout="3s")
    config, pending = keep_restart_only(running, loaded, live_listener=False)
    assert pending == ("server.graceful_timeout", "server.max_header_size")
    assert config.server == running.server.model_copy(update={"body_timeout": 3.0})
    assert keep_restart_only(running, loaded, live_listener=True) == (loaded, ())


async def test_spans_are_exported_and_match_what_upstreams_saw(nursery: trio.Nursery) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    with trio.fail_after(20):
        collector = await start_upstream(nursery, {"/v1/traces": Reply(json={})})
        seen, handler = path_recorder()
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up}, [backend_config("a", "u", "/a"), backend_config("b", "u", "/b", group="b")]
        )
        config["tracing"] = {
            "otlp_endpoint": collector.url + "/v1/traces",
            "service_name": "gw-test",
        }
        gw = await start_gateway(nursery, config)
        trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        r = await gw.get("/api/1", headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        assert r.status_code == 200
        exporter = gw.app.exporter
        assert exporter is not None

        def exported() -> dict[str, Any]:
            spans = []
            for req in collector.requests:
                export = ExportTraceServiceRequest.FromString(req.body)
                for resource_spans in export.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        spans.extend(scope_spans.spans)
            return {s.name: s for s in spans}

        # the server span ends after the answer has gone out (the access log and metrics
        # come first), so the client may be back before it has: flush until it is there
        while "GET /api/{id}" not in (by_name := exported()):
            await trio.to_thread.run_sync(exporter.force_flush)  # the SDK posts from a thread
            if "GET /api/{id}" not in (by_name := exported()):
                await trio.sleep(0.01)
        server = by_name["GET /api/{id}"]
        assert server.trace_id.hex() == trace_id
        assert server.parent_span_id.hex() == parent
        backends = [by_name["backend a"], by_name["backend b"]]
        assert all(b.parent_span_id == server.span_id for b in backends)
        sent = {req.path: req.headers["traceparent"].split("-")[2] for req in seen}
        assert sent == {"/a": backends[0].span_id.hex(), "/b": backends[1].span_id.hex()}

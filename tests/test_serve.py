"""The gateway as users run it: `gateway serve` and `gateway demo` in their own process."""

from __future__ import annotations

import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from conftest import (
    backend_config,
    config_text,
    raw_request,
    simple_config,
    start_gateway_process,
    start_upstream,
)
from upstream import Reply


async def test_a_burst_of_200_requests_fans_out_concurrently(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """200 simultaneous requests x 3 backends of 100 ms: serialised this is 60 s. What is
    checked is concurrency (calls in flight at each upstream at once), not a time, which
    a loaded machine would make flaky; the burst's speed is measured in bench/burst.py."""
    in_flight = {"a": 0, "b": 0, "c": 0}
    most = dict(in_flight)

    def counting(name: str) -> Any:
        async def handler(req: Any) -> Reply:
            in_flight[name] += 1
            most[name] = max(most[name], in_flight[name])
            try:
                await trio.sleep(0.1)  # the upstream's latency
            finally:
                in_flight[name] -= 1
            return Reply(json={name: 1})

        return handler

    with trio.fail_after(30):
        ups = {name: await start_upstream(nursery, counting(name)) for name in ("a", "b", "c")}
        config = simple_config(
            ups, [backend_config(n, n, "/x", required=True) for n in ups], deadline="5s"
        )
        file = tmp_path / "burst.yaml"
        file.write_text(config_text(config))
        url, _ = await start_gateway_process(nursery, str(file))
        await raw_request(url, "/api/0")  # the worker is warm

        statuses: list[int] = []

        async def one(i: int) -> None:
            statuses.append((await raw_request(url, f"/api/{i}")).status)

        async with trio.open_nursery() as n:
            for i in range(200):
                n.start_soon(one, i)
        assert statuses == [200] * 200
        assert sum(up.calls("/x") for up in ups.values()) == 3 * 201
        # serialised (or a pool handing one connection to queued calls) this would be 1
        assert min(most.values()) >= 20, most


async def test_serve_stops_cleanly_on_sigterm(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(20):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
        file = tmp_path / "g.yaml"
        file.write_text(config_text(simple_config({"u": up}, [backend_config("a", "u", "/x")])))
        url, proc = await start_gateway_process(nursery, str(file))
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.get(url + "/api/1")
        assert r.json() == {"a": 1}
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0


async def test_demo_answers_real_aggregated_requests(nursery: trio.Nursery) -> None:
    with trio.fail_after(30):
        url, proc = await start_gateway_process(nursery, "", command="demo")
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.get(url + "/api/users/1/dashboard")
            assert r.status_code == 200
            assert r.json()["profile"] == {
                "name": "Ada Lovelace",
                "email": "ada@example.com",
                "level": "gold",
                "greeting": "Hello, Ada!",
                "address": {"city": "London"},
            }
            assert r.headers["x-gateway-backends"].startswith("profile=ok, orders=")
            assert r.headers["x-gateway-backends"].endswith(", loyalty=skipped")
            assert "loyalty" not in r.json()
            r = await client.get(url + "/api/users/1/dashboard?include=loyalty")
            assert r.status_code == 200
            assert r.headers["x-gateway-backends"].endswith(", loyalty=ok")
            assert r.json()["loyalty"]["points"] > 0
            r = await client.get(url + "/api/users/2")
            assert r.status_code == 200
            assert r.json()["data"]["name"] == "Grace Hopper"
            r = await client.get(url + "/api/users/42/dashboard")
            assert r.status_code == 502
            assert r.json()["backends"]["profile"] == "http_404"
        proc.send_signal(signal.SIGINT)
        assert await proc.wait() == 0


def test_module_entry_point_is_the_cli() -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("gateway ")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_healthy(url: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as client:
        while True:
            try:
                return await client.get(url + "/__gateway/health")
            except httpx.TransportError:
                await trio.sleep(0.05)


async def start_workers(nursery: trio.Nursery, file: Path, *extra: str) -> tuple[str, trio.Process]:
    """``gateway serve FILE --workers 2`` on a free port (hypercorn prints no bound port)."""
    import subprocess

    port = free_port()
    cmd = [sys.executable, "-m", "gateway", "serve", str(file), "--workers", "2"]
    proc: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            [*cmd, "--bind", f"127.0.0.1:{port}", *extra],
            stderr=subprocess.DEVNULL,
            check=False,
        )
    )
    return f"http://127.0.0.1:{port}", proc


async def test_serve_with_several_workers(nursery: trio.Nursery, tmp_path: Path) -> None:

    with trio.fail_after(30):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
        file = tmp_path / "g.yaml"
        file.write_text(config_text(simple_config({"u": up}, [backend_config("a", "u", "/x")])))
        url, proc = await start_workers(nursery, file)
        assert (await wait_healthy(url)).status_code == 200
        async with httpx.AsyncClient(trust_env=False) as client:
            for i in range(10):
                assert (await client.get(f"{url}/api/{i}")).json() == {"a": 1}
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0


async def test_plain_hypercorn_serves_gateway_asgi_app(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    import os
    import subprocess

    with trio.fail_after(30):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
        file = tmp_path / "g.yaml"
        file.write_text(config_text(simple_config({"u": up}, [backend_config("a", "u", "/x")])))
        port = free_port()
        cmd = [sys.executable, "-m", "hypercorn", "-k", "trio", "-b", f"127.0.0.1:{port}"]
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                [*cmd, "gateway.asgi:app"],
                env={**os.environ, "GATEWAY_CONFIG": str(file)},
                stderr=subprocess.DEVNULL,
                check=False,
            )
        )
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url)
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.get(url + "/api/1")
        assert r.json() == {"a": 1}
        assert r.headers["x-gateway-backends"] == "a=ok"
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


def test_a_bad_config_under_plain_hypercorn_exits_2_with_the_problem(tmp_path: Path) -> None:
    import os
    import subprocess

    file = tmp_path / "bad.yaml"
    file.write_text(
        "version: 1\nendpoints: [{path: /a, backends: [{name: a, upstream: nope, path: /x}]}]\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import gateway.asgi"],
        env={**os.environ, "GATEWAY_CONFIG": str(file)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert f"{file}: endpoints[0].backends[0].upstream: unknown upstream 'nope'" in out.stderr
    assert "Traceback" not in out.stderr


async def test_sigterm_drains_readiness_first_and_finishes_in_flight_requests(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        up = await start_upstream(nursery, {"/slow": Reply(json={"done": True}, delay_s=1.5)})
        config = simple_config({"u": up}, [backend_config("a", "u", "/slow")], deadline="5s")
        config["server"] = {"drain_delay": "700ms", "graceful_timeout": "5s"}
        file = tmp_path / "drain.yaml"
        file.write_text(config_text(config))
        url, proc = await start_gateway_process(nursery, str(file))
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(url + "/__gateway/ready")).status_code == 200
            slow: list[httpx.Response] = []

            async def slow_request() -> None:
                async with httpx.AsyncClient(trust_env=False) as own:
                    slow.append(await own.get(url + "/api/1"))

            async with trio.open_nursery() as n:
                n.start_soon(slow_request)
                await trio.sleep(0.2)  # the slow request is in flight
                proc.send_signal(signal.SIGTERM)
                await trio.sleep(0.2)
                # during the drain window: still accepting, but not ready
                async with httpx.AsyncClient(trust_env=False) as fresh:
                    r = await fresh.get(url + "/__gateway/ready")
                assert r.status_code == 503
                assert r.json() == {"status": "draining"}
                await trio.sleep(0.6)  # past the drain window: the listener is closed
                async with httpx.AsyncClient(trust_env=False) as late:
                    try:
                        await late.get(url + "/__gateway/health")
                    except httpx.ConnectError:
                        pass
                    else:
                        raise AssertionError("new connections accepted after the drain window")
        assert slow[0].status_code == 200
        assert slow[0].json() == {"done": True}
        assert await proc.wait() == 0


async def test_metrics_add_up_across_two_workers(nursery: trio.Nursery, tmp_path: Path) -> None:

    from test_operations import metric

    with trio.fail_after(30):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1})})
        file = tmp_path / "g.yaml"
        file.write_text(config_text(simple_config({"u": up}, [backend_config("a", "u", "/x")])))
        url, proc = await start_workers(nursery, file, "--log-level", "warning")
        await wait_healthy(url)
        for i in range(40):  # a new connection each time: the kernel spreads them
            async with httpx.AsyncClient(trust_env=False) as client:
                assert (await client.get(f"{url}/api/{i}")).status_code == 200
        totals = set()
        for _ in range(6):  # whichever worker answers, the sum is the same
            async with httpx.AsyncClient(trust_env=False) as client:
                text = (await client.get(url + "/__gateway/metrics")).text
            totals.add(
                metric(
                    text, "gateway_requests_total", endpoint="/api/{id}", method="GET", status="200"
                )
            )
        assert totals == {40.0}
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0


async def test_ten_reloads_under_steady_load_fail_no_request(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        up = await start_upstream(
            nursery, {"/x": Reply(json={"a": 1}, delay_s=0.02), "/y": Reply(json={"b": 2})}
        )
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        file = tmp_path / "live.yaml"
        file.write_text(config_text(config))
        url, proc = await start_gateway_process(nursery, str(file), "--log-level", "warning")
        failures: list[str] = []
        answered = 0
        stop = trio.Event()

        async def load() -> None:
            nonlocal answered
            async with httpx.AsyncClient(trust_env=False) as client:
                while not stop.is_set():
                    r = await client.get(url + "/api/1")
                    if r.status_code != 200 or r.json() != {"a": 1}:
                        failures.append(f"{r.status_code} {r.text}")
                    answered += 1

        async with trio.open_nursery() as n:
            for _ in range(8):
                n.start_soon(load)
            for i in range(10):
                await trio.sleep(0.15)
                if i == 4:
                    file.write_text("version: 1\nendpoints: [{path: /broken}]\n")  # refused
                else:
                    config["endpoints"] = [
                        config["endpoints"][0],
                        {"path": f"/v{i}", "backends": [backend_config("b", "u", "/y")]},
                    ]
                    file.write_text(config_text(config))
                proc.send_signal(signal.SIGHUP)
            await trio.sleep(0.3)
            stop.set()
        assert failures == []
        assert answered > 100
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(url + "/v9")).json() == {"b": 2}  # the last reload is live
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0


async def test_watch_reloads_when_the_file_changes(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(20):
        up = await start_upstream(nursery, {"/x": Reply(json={"a": 1}), "/y": Reply(json={"b": 2})})
        config = simple_config({"u": up}, [backend_config("a", "u", "/x")])
        file = tmp_path / "watched.yaml"
        file.write_text(config_text(config))
        url, proc = await start_gateway_process(nursery, str(file), "--watch")
        config["endpoints"].append({"path": "/later", "backends": [backend_config("b", "u", "/y")]})
        file.write_text(config_text(config))
        async with httpx.AsyncClient(trust_env=False) as client:
            while (r := await client.get(url + "/later")).status_code == 404:  # noqa: ASYNC110 - polling another process
                await trio.sleep(0.1)
            assert r.json() == {"b": 2}
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0

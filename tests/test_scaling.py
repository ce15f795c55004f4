"""docs/scaling.md's nginx example, run on loopback: nginx in front of two gateway
instances that share rate limits and caches through a real redis-server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import (
    backend_config,
    config_text,
    recorder,
    simple_config,
    start_gateway_process,
    start_upstream,
)
from redis_server import RedisServer, free_port
from upstream import Reply

DOC = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"


def nginx_example() -> str:
    """The doc's nginx block, as it is written."""
    (block,) = re.findall(r"```nginx\n(.*?)```", DOC.read_text(), re.S)
    return block


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if found is None:
        pytest.fail("nginx is not installed: apt-get install -y nginx-light")
    return found


def write_nginx_conf(prefix: str, http_block: str) -> list[str]:
    """A whole nginx.conf around ``http_block``, in ``prefix``; the command to run it."""
    conf = f"""
daemon off;
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{http_block}
}}
"""
    Path(prefix, "nginx.conf").write_text(conf)
    return [nginx_binary(), "-p", prefix, "-c", os.path.join(prefix, "nginx.conf")]


async def test_the_nginx_example_balances_two_instances_sharing_redis(
    nursery: trio.Nursery, redis: RedisServer, tmp_path: Any
) -> None:
    with trio.fail_after(40):
        seen, handler = recorder(lambda req: Reply(json={"user": 1}))
        up = await start_upstream(nursery, handler)
        config = simple_config(
            {"u": up}, [backend_config("a", "u", "/x", cache={"ttl": "30s"})], path="/api/{id}"
        )
        config["endpoints"][0]["rate_limit"] = {"rate": "10/h", "key": "ip"}
        config["server"] = {"trusted_proxies": ["127.0.0.1/32"]}
        config["state"] = {"redis": redis.url, "timeout": "500ms"}
        file = tmp_path / "gw.yaml"
        file.write_text(config_text(config))
        instances = [await start_gateway_process(nursery, str(file)) for _ in range(2)]
        ports = [url.rsplit(":", 1)[1] for url, _ in instances]

        front = free_port()
        block = (
            nginx_example()
            .replace("127.0.0.1:8001", f"127.0.0.1:{ports[0]}")
            .replace("127.0.0.1:8002", f"127.0.0.1:{ports[1]}")
            .replace("listen 127.0.0.1:8000", f"listen 127.0.0.1:{front}")
        )
        cmd = write_nginx_conf(str(tmp_path), block)
        await nursery.start(partial(trio.run_process, cmd, stderr=subprocess.DEVNULL, check=False))
        url = f"http://127.0.0.1:{front}"
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            with trio.fail_after(10):
                while True:  # nginx is up once it answers
                    try:
                        await client.get(url + "/__gateway/ready")
                        break
                    except httpx.TransportError:
                        await trio.sleep(0.05)
            # one client, seen through nginx as 203.0.113.7: 10 allowed in all instances
            as_client = {"x-forwarded-for": "203.0.113.7"}
            statuses = [
                (await client.get(url + "/api/1", headers=as_client)).status_code for _ in range(12)
            ]
            assert statuses == [200] * 10 + [429] * 2
            # another client has its own allowance
            other = await client.get(url + "/api/1", headers={"x-forwarded-for": "203.0.113.8"})
            assert other.status_code == 200
            assert other.headers["x-gateway-backends"] == "a=ok;cache=hit"
            # the cache was shared: one upstream call for all of them
            assert len(seen) == 1
            # the probes pass through; the private admin routes do not
            assert (await client.get(url + "/__gateway/health")).status_code == 200
            for private in ("config", "upstreams", "state", "metrics"):
                assert (await client.get(url + "/__gateway/" + private)).status_code == 404
            # both instances answered
            for instance_url, _ in instances:
                metrics = (await client.get(instance_url + "/__gateway/metrics")).text
                counted = re.search(
                    r'gateway_requests_total\{endpoint="/api/\{id\}",method="GET",status="200"\} (\S+)',
                    metrics,
                )
                assert counted is not None and float(counted.group(1)) >= 1
        for _, proc in instances:
            proc.terminate()
        nursery.cancel_scope.cancel()

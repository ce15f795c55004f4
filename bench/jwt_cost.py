"""Cost of one bearer-token validation (gateway._auth.jwt.verify), in microseconds.

    .venv/bin/python bench/jwt_cost.py [--runs 5000]
    taskset -c 0 .venv/bin/python bench/jwt_cost.py   # steadier on a shared machine

For RS256 (RSA 2048) and ES256 (P-256): a token seen for the first time (the signature is
checked, then put in the cache) and the same token again (a VerifiedCache hit: digest,
allow-list, key and claims only). For reference, in the same run: PyJWT's ``jwt.decode``
with the same checks, and joserfc's ``jwt.decode`` if joserfc is importable. Each figure is
the median of ``--runs`` single calls timed with ``perf_counter_ns``, after a warm-up, the
variants interleaved call by call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway._auth.jwt import JwtSettings, Key, StaticKeys, VerifiedCache, verify

NOW = time.time()
POLICY = JwtSettings("https://issuer/", ("orders-api",), ("RS256", "ES256"), leeway_s=30)


def medians_us(calls: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median microseconds per call of each; the calls are interleaved, one of each per
    round, so that a load that comes and goes on a shared machine weighs on all alike."""
    samples: dict[str, list[int]] = {name: [] for name in calls}
    for round_ in range(runs + 200):  # the first 200 rounds warm up
        for name, call in calls.items():
            start = time.perf_counter_ns()
            call()
            if round_ >= 200:
                samples[name].append(time.perf_counter_ns() - start)
    return {name: statistics.median(values) / 1000 for name, values in samples.items()}


def measure(alg: str, private: Any, runs: int) -> dict[str, float]:
    claims = {"iss": "https://issuer/", "aud": "orders-api", "sub": "u", "exp": NOW + 3600}
    public = private.public_key()
    keys = StaticKeys([Key.public(public, "k", None)])
    token = pyjwt.encode(claims, private, algorithm=alg, headers={"kid": "k"})
    cache = VerifiedCache(1000)
    verify(token, keys, POLICY, NOW, cache)
    calls: dict[str, Callable[[], object]] = {
        "first sight": lambda: verify(token, keys, POLICY, NOW),
        "cached": lambda: verify(token, keys, POLICY, NOW, cache),
        "PyJWT jwt.decode": lambda: pyjwt.decode(
            token, public, algorithms=[alg], audience="orders-api", issuer="https://issuer/"
        ),
    }
    try:
        from joserfc import jwt as jose_jwt
        from joserfc.jwk import ECKey, RSAKey

        jose_key = (RSAKey if alg == "RS256" else ECKey).import_key(public)
        calls["joserfc jwt.decode"] = lambda: jose_jwt.decode(token, jose_key, algorithms=[alg])
    except ImportError:
        pass
    row = medians_us(calls, runs)
    assert cache.statistics().hits >= runs
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3000)
    runs = parser.parse_args().runs
    rows = {
        "RS256": measure(
            "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048), runs
        ),
        "ES256": measure("ES256", ec.generate_private_key(ec.SECP256R1()), runs),
    }
    columns = list(rows["RS256"])
    print(f"us per verify, median of {runs} (Python {sys.version.split()[0]})")
    print(" | ".join(f"{c:>18}" for c in ["alg", *columns]))
    for alg, row in rows.items():
        print(" | ".join([f"{alg:>18}", *(f"{row[c]:>18.1f}" for c in columns)]))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""TokenReview webhook load: N reviews of one token at concurrency C over keep-alive HTTPS.

The client runs in its own process (a child Python) so it never shares the operator's GIL, nor the
caller's. The token travels to the child on stdin, never on a command line, and is never printed.

  from tokenreview import run_tokenreview_bench
  run_tokenreview_bench(url, token, cert, key, ca, total=20000, concurrency=32)
  -> {"reviews_per_s", "p50_ms", "p99_ms", "errors", ...}

CLI: .venv/bin/python bench/tokenreview.py --url https://127.0.0.1:PORT/authenticate \\
        --cert client.crt --key client.key --ca ca.crt --token-file TOKEN_FILE (or - for stdin) \\
        [--total 20000] [--concurrency 32]

`errors`: reviews that did not come back as HTTP 200 with status.authenticated true (transport
failures included); `unauthenticated` and `http_errors` split them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import subprocess
import sys
import time
from typing import Any

WARMUP_PER_CONNECTION = 4


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def _bench(
    url: str, token: str, cert: str | None, key: str | None, ca: str | None, total: int, concurrency: int
) -> dict[str, Any]:
    import aiohttp

    ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    if cert:
        ctx.load_cert_chain(cert, key)
    body = json.dumps(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    ).encode()
    del token
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    counts = {"http_errors": 0, "unauthenticated": 0}
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=ctx, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=30)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(record: bool) -> None:
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    status = resp.status
            except Exception:  # noqa: BLE001 — a transport failure is a counted error, not a crash
                if record:
                    counts["http_errors"] += 1
                return
            elapsed = time.perf_counter() - t0
            if not record:
                return
            latencies.append(elapsed)
            if status != 200:
                counts["http_errors"] += 1
                return
            try:
                ok = json.loads(raw)["status"]["authenticated"] is True
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                counts["unauthenticated"] += 1

        async def worker(n: int, record: bool) -> None:
            for _ in range(n):
                await one(record)

        def shares(n: int) -> list[int]:
            return [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]

        # Warm-up: open every keep-alive connection (TLS handshakes are not what we measure).
        await asyncio.gather(*(worker(WARMUP_PER_CONNECTION, False) for _ in range(concurrency)))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(n, True) for n in shares(total)))
        wall = time.perf_counter() - t0

    errors = counts["http_errors"] + counts["unauthenticated"]
    return {
        "reviews_per_s": round(total / wall, 1) if wall > 0 else float("nan"),
        "p50_ms": round(_pct(latencies, 50) * 1000, 2),
        "p99_ms": round(_pct(latencies, 99) * 1000, 2),
        "errors": errors,
        "total": total,
        "concurrency": concurrency,
        "wall_s": round(wall, 3),
        **counts,
    }


def run_tokenreview_bench(
    url: str,
    token: str,
    cert: str | None,
    key: str | None,
    ca: str | None,
    total: int = 20000,
    concurrency: int = 32,
) -> dict[str, Any]:
    """Fire `total` reviews of `token` at `url` with `concurrency` keep-alive connections, from a
    separate process; returns {reviews_per_s, p50_ms, p99_ms, errors, ...}."""
    cmd = [sys.executable, __file__, "--url", url, "--total", str(total), "--concurrency", str(concurrency)]
    cmd += ["--token-file", "-"]
    for flag, value in (("--cert", cert), ("--key", key), ("--ca", ca)):
        if value:
            cmd += [flag, str(value)]
    proc = subprocess.run(cmd, input=token, capture_output=True, text=True, timeout=max(120, total / 50))
    if proc.returncode != 0:
        raise RuntimeError(f"tokenreview bench failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="https://HOST:PORT/authenticate")
    ap.add_argument("--token-file", required=True, help="file holding the token, or - for stdin")
    ap.add_argument("--cert", help="client certificate (when /authenticate requires one)")
    ap.add_argument("--key", help="client certificate key")
    ap.add_argument("--ca", help="CA of the operator's serving certificate")
    ap.add_argument("--total", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args(argv)
    if args.token_file == "-":
        token = sys.stdin.read().strip()
    else:
        with open(args.token_file) as fh:
            token = fh.read().strip()
    result = asyncio.run(_bench(args.url, token, args.cert, args.key, args.ca, args.total, args.concurrency))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

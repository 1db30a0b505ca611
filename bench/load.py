"""Load tool: an overload burst or a soak against a running server, on loopback only, bounded in count and time.

    python -m bench.load --url http://127.0.0.1:8000                # burst: 4x (max_batch + max_queue) at once
    python -m bench.load --url http://127.0.0.1:8000 --soak 10      # 10 minutes of steady mixed traffic

The burst reads the server's limits from `/ready`, measures unloaded latency (one request at a time), runs one
warm-up wave at capacity, then sends `factor x capacity` identical greedy requests at once. It checks: only 200
and 429 come back, 429s arrive within `--reject-ms`, every admitted request returns the unloaded text, p99 of
admitted latency <= `--max-ratio` x unloaded p99, and afterwards the queue is empty and resident memory
(`process_resident_memory_bytes` from `/metrics`) is back within `--max-growth`. The soak reports errors by class,
latency percentiles and memory growth. Both print a JSON report; the exit code is 1 if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

PROMPT = "At a wedding we eat"
REQUEST_TIMEOUT_S = 120.0


class NotLoopback(ValueError):
    """The target is not a loopback address: this tool never loads anything else."""


def check_loopback(url: str) -> None:
    """Raise `NotLoopback` unless every address `url`'s host resolves to is a loopback address."""
    host = urlsplit(url).hostname
    if not host:
        raise NotLoopback(f"no host in {url!r}")
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise NotLoopback(f"cannot resolve {host!r}: {exc}") from None
    addresses = {info[4][0] for info in infos}
    bad = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if not addresses or bad:
        raise NotLoopback(f"{host!r} resolves to non-loopback {bad}; the load tool only targets loopback")


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no data."""
    if not xs:
        return math.nan
    ordered = sorted(xs)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def stats_ms(xs: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max of latencies given in seconds, in milliseconds."""
    return {k: round(v * 1000, 2) for k, v in (("p50", percentile(xs, 50)), ("p99", percentile(xs, 99)))} | {
        "max": round(max(xs) * 1000, 2) if xs else math.nan,
        "n": len(xs),
    }


@dataclass
class Reply:
    """One request's outcome: status (None = transport error), latency, text, and the error type if any."""

    kind: str
    status: int | None
    latency: float
    text: str | None = None
    error: str | None = None


@dataclass
class Client:
    """An httpx client for one server plus the request shapes the tool sends."""

    url: str
    api_key: str | None = None
    new_tokens: int = 16
    connections: int = 64
    http: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        check_loopback(self.url)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        pool = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
        self.http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=REQUEST_TIMEOUT_S, limits=pool
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def ready(self, wait_s: float = 60.0) -> dict[str, Any]:
        """`/ready` once it answers 200 (polled for up to `wait_s`: the server may still be loading)."""
        deadline = time.perf_counter() + wait_s
        while True:
            try:
                r = await self.http.get("/ready")
                if r.status_code == 200:
                    return r.json()
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.TransportError as exc:
                last = type(exc).__name__
            if time.perf_counter() > deadline:
                raise RuntimeError(f"server not ready after {wait_s:g} s: {last}")
            await asyncio.sleep(0.25)

    async def metrics(self) -> dict[str, float]:
        """Unlabelled samples of `/metrics` (name -> value)."""
        r = await self.http.get("/metrics")
        out: dict[str, float] = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                out[name] = float(value)
        return out

    async def rss(self) -> float | None:
        return (await self.metrics()).get("process_resident_memory_bytes")

    def body(self, **extra: Any) -> dict[str, Any]:
        return {"prompt": PROMPT, "max_new_tokens": self.new_tokens, "temperature": 0.0, **extra}

    async def post(self, kind: str, path: str, body: dict[str, Any]) -> Reply:
        """POST; latency runs from the moment the request is on the wire (not while it waits in this client)."""
        t0 = [time.perf_counter()]

        async def trace(event: str, _info: dict[str, Any]) -> None:
            if event == "http11.send_request_body.complete":
                t0[0] = time.perf_counter()

        try:
            r = await self.http.post(path, json=body, extensions={"trace": trace})
        except httpx.HTTPError as exc:
            return Reply(kind, None, time.perf_counter() - t0[0], error=type(exc).__name__)
        latency = time.perf_counter() - t0[0]
        data = _json(r)
        if r.status_code != 200:
            return Reply(kind, r.status_code, latency, error=_error_type(data))
        text = data.get("text") if "text" in data else _openai_text(data)
        return Reply(kind, 200, latency, text=text)

    async def stream(self, kind: str, body: dict[str, Any]) -> Reply:
        """A streamed /generate; the text is the concatenation of its `token` events."""
        t0 = time.perf_counter()
        parts: list[str] = []
        last: str | None = None
        try:
            async with self.http.stream("POST", "/generate", json={**body, "stream": True}) as r:
                if r.status_code != 200:
                    await r.aread()
                    return Reply(kind, r.status_code, time.perf_counter() - t0, error=_error_type(_json(r)))
                event = None
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        last = event
                        if event == "token":
                            parts.append(json.loads(line[6:])["text"])
        except httpx.HTTPError as exc:
            return Reply(kind, None, time.perf_counter() - t0, error=type(exc).__name__)
        latency = time.perf_counter() - t0
        if last != "done":
            return Reply(kind, 200, latency, error=f"stream ended with {last!r}")
        return Reply(kind, 200, latency, text="".join(parts))

    async def wait_idle(self, timeout: float = 30.0) -> tuple[bool, float]:
        """Poll `/metrics` until nothing waits or runs; (idle?, seconds it took)."""
        t0 = time.perf_counter()
        while True:
            m = await self.metrics()
            if m.get("steer_num_requests_waiting", 0) == 0 and m.get("steer_num_rows_running", 0) == 0:
                return True, time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                return False, time.perf_counter() - t0
            await asyncio.sleep(0.05)


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        data = r.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_type(data: dict[str, Any]) -> str:
    err = data.get("error")
    return str(err.get("type")) if isinstance(err, dict) else "no-json-error-body"


def _openai_text(data: dict[str, Any]) -> str | None:
    choices = data.get("choices") or [{}]
    first = choices[0]
    return first.get("text") if "text" in first else (first.get("message") or {}).get("content")


# --- burst ------------------------------------------------------------------------------------------------


async def burst(
    client: Client,
    *,
    factor: float = 4.0,
    baseline: int = 10,
    max_requests: int = 1000,
    reject_ms: float = 100.0,
    max_ratio: float = 2.0,
    max_growth: float = 0.05,
    steer: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Single-request latency, one wave at capacity, then `factor x capacity` at once; a report with checks.

    "Unloaded" for the p99 check is the wave at capacity (as many requests as the server admits, sent at once,
    none refused): the same admitted work without the excess, so the ratio shows what overload itself costs.
    Against one request alone, queued requests wait `ceil(capacity / max_batch)` generations by design; that
    ratio is reported too (`admitted_p99_over_single_p99`).
    """
    limits = (await client.ready())["limits"]
    capacity = int(limits["max_batch"]) + int(limits["max_queue"])
    n = min(max_requests, max(1, math.ceil(factor * capacity)))
    body = client.body(**({"steer": steer} if steer else {}))

    unloaded = [await client.post("unloaded", "/generate", body) for _ in range(baseline)]
    bad = [r for r in unloaded if r.status != 200]
    if bad:
        raise RuntimeError(f"unloaded request failed: {bad[0]}")
    reference = unloaded[0].text
    # At capacity, not overloaded: as many requests at once as the server admits (also the warm-up wave).
    at_capacity = await asyncio.gather(*(client.post("capacity", "/generate", body) for _ in range(capacity)))
    await client.wait_idle()
    rss_before = await client.rss()

    t0 = time.perf_counter()
    replies = await asyncio.gather(*(client.post("burst", "/generate", body) for _ in range(n)))
    wall = time.perf_counter() - t0
    idle, idle_s = await client.wait_idle()
    await asyncio.sleep(1.0)
    rss_after = await client.rss()

    admitted = [r for r in replies if r.status == 200]
    rejected = [r for r in replies if r.status == 429]
    unloaded_p99 = percentile([r.latency for r in unloaded], 99)
    capacity_p99 = percentile([r.latency for r in at_capacity if r.status == 200], 99)
    admitted_p99 = percentile([r.latency for r in admitted], 99)
    growth = (rss_after - rss_before) / rss_before if rss_before and rss_after else None
    checks = {
        "only_200_or_429": len(admitted) + len(rejected) == n,
        "some_rejected": len(rejected) > 0,
        "admitted_correct": all(r.text == reference for r in admitted),
        "rejected_fast": all(r.latency * 1000 <= reject_ms for r in rejected),
        "capacity_wave_ok": all(r.status == 200 and r.text == reference for r in at_capacity),
        "admitted_p99_ratio": admitted_p99 <= max_ratio * capacity_p99,
        "idle_after": idle,
        "memory_back": growth is not None and abs(growth) <= max_growth,
    }
    return {
        "mode": "burst",
        "limits": {k: limits[k] for k in ("max_batch", "max_queue", "max_new_tokens")},
        "capacity": capacity,
        "requests": n,
        "new_tokens": client.new_tokens,
        "status": dict(Counter(str(r.status) for r in replies)),
        "errors": dict(Counter(r.error for r in replies if r.status not in (200, 429))),
        "wall_s": round(wall, 3),
        "unloaded_ms": stats_ms([r.latency for r in unloaded]),
        "at_capacity_ms": stats_ms([r.latency for r in at_capacity]),
        "admitted_ms": stats_ms([r.latency for r in admitted]),
        "rejected_ms": stats_ms([r.latency for r in rejected]),
        "admitted_p99_over_capacity_p99": round(admitted_p99 / capacity_p99, 3) if admitted else None,
        "admitted_p99_over_single_p99": round(admitted_p99 / unloaded_p99, 3) if admitted else None,
        "idle_after_s": round(idle_s, 3),
        "rss_before_mb": _mb(rss_before),
        "rss_after_mb": _mb(rss_after),
        "rss_growth_pct": round(100 * growth, 2) if growth is not None else None,
        "checks": checks,
        "ok": all(checks.values()),
    }


def _mb(value: float | None) -> float | None:
    return round(value / 2**20, 1) if value is not None else None


# --- soak -------------------------------------------------------------------------------------------------


EXPECTED = {"invalid": 422}  # request kinds that must fail (and with which status); the rest must succeed


async def _soak_request(client: Client, kind: str, steer: dict[str, float]) -> Reply:
    if kind == "plain":
        return await client.post(kind, "/generate", client.body())
    if kind == "steered":
        return await client.post(kind, "/generate", client.body(steer=steer))
    if kind == "stream":
        return await client.stream(kind, client.body(steer=steer))
    if kind == "compare":
        return await client.post(kind, "/generate", client.body(steer=steer, compare=True))
    if kind == "chat":
        msgs = [{"role": "user", "content": PROMPT}]
        body = {"messages": msgs, "max_new_tokens": client.new_tokens, "temperature": 0.0}
        return await client.post(kind, "/generate", body)
    if kind == "sampled":
        return await client.post(kind, "/generate", client.body(temperature=0.8, top_p=0.9, seed=None))
    if kind == "invalid":
        return await client.post(kind, "/generate", client.body(max_new_tokens=0))
    raise ValueError(kind)


KINDS = ("plain", "steered", "stream", "compare", "chat", "sampled", "invalid")


def classify(reply: Reply, reference: dict[str, str]) -> str:
    """'ok', or an error class: transport, http_429, http_4xx, http_5xx, inconsistent_output, bad_stream."""
    expected = EXPECTED.get(reply.kind, 200)
    if reply.status is None:
        return "transport"
    if reply.status != expected:
        if reply.status == 429:
            return "http_429"
        return "http_5xx" if reply.status >= 500 else "http_4xx"
    if reply.status != 200:
        return "ok"  # the expected error status
    if reply.error:
        return "bad_stream"
    if reply.kind in ("plain", "chat"):
        key = reply.kind  # greedy, unsteered: always the same text
    elif reply.kind in ("steered", "stream", "compare"):
        key = "steered"  # greedy, same steering: streamed or not, the same text
    else:
        return "ok"
    if reference.setdefault(key, reply.text or "") != (reply.text or ""):
        return "inconsistent_output"
    return "ok"


async def soak(
    client: Client,
    minutes: float,
    *,
    concurrency: int | None = None,
    sample_s: float = 10.0,
    max_requests: int = 1_000_000,
    warmup_s: float | None = None,
) -> dict[str, Any]:
    """Steady mixed traffic for `minutes` at `concurrency` (default max_batch); errors by class and memory."""
    limits = (await client.ready())["limits"]
    concurrency = concurrency or int(limits["max_batch"])
    catalog = (await client.http.get("/vectors")).json().get("vectors", [])
    steer = {catalog[0]["name"]: catalog[0]["default_strength"]} if catalog else {"sae:0": 1.0}
    duration = minutes * 60
    warmup_s = min(60.0, duration / 10) if warmup_s is None else warmup_s
    start = time.perf_counter()
    deadline = start + duration
    replies: list[Reply] = []
    classes: Counter[str] = Counter()
    reference: dict[str, str] = {}
    samples: list[tuple[float, float | None]] = [(0.0, await client.rss())]
    sent = 0

    async def worker(index: int) -> None:
        nonlocal sent
        i = index
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            reply = await _soak_request(client, KINDS[i % len(KINDS)], steer)
            replies.append(reply)
            classes[classify(reply, reference)] += 1
            i += 1

    async def sampler() -> None:
        while time.perf_counter() < deadline:
            await asyncio.sleep(min(sample_s, max(0.0, deadline - time.perf_counter())))
            samples.append((time.perf_counter() - start, await client.rss()))

    await asyncio.gather(sampler(), *(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    idle, _ = await client.wait_idle()
    await asyncio.sleep(1.0)
    samples.append((time.perf_counter() - start, await client.rss()))

    rss = [(t, v) for t, v in samples if v is not None]
    after_warm = next((v for t, v in rss if t >= warmup_s), None)
    first, last = (rss[0][1], rss[-1][1]) if rss else (None, None)
    growth = (last - after_warm) / after_warm if last is not None and after_warm else None
    latency = {
        kind: stats_ms([r.latency for r in replies if r.kind == kind and r.status == EXPECTED.get(kind, 200)])
        for kind in KINDS
    }
    errors = {k: v for k, v in classes.items() if k != "ok"}
    return {
        "mode": "soak",
        "minutes": round(elapsed / 60, 2),
        "concurrency": concurrency,
        "new_tokens": client.new_tokens,
        "requests": len(replies),
        "requests_per_s": round(len(replies) / elapsed, 2),
        "ok": classes["ok"],
        "errors_by_class": errors,
        "status": dict(Counter(str(r.status) for r in replies)),
        "latency_ms": latency,
        "rss_start_mb": _mb(first),
        "rss_after_warmup_mb": _mb(after_warm),
        "rss_end_mb": _mb(last),
        "rss_max_mb": _mb(max(v for _, v in rss)) if rss else None,
        "rss_growth_after_warmup_pct": round(100 * growth, 2) if growth is not None else None,
        "rss_samples_mb": [(round(t, 1), _mb(v)) for t, v in rss],
        "idle_after": idle,
        "passed": not errors and idle,
    }


# --- command line ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (loopback only)")
    p.add_argument("--api-key", help="sent as `Authorization: Bearer <key>` (none by default)")
    p.add_argument("--new-tokens", type=int, default=16, help="max_new_tokens of every request")
    p.add_argument("--factor", type=float, default=4.0, help="burst size as a multiple of capacity")
    p.add_argument("--baseline", type=int, default=10, help="unloaded requests (one at a time)")
    p.add_argument("--max-requests", type=int, default=1000, help="hard cap on requests (burst)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="hard cap on run time (burst)")
    p.add_argument("--reject-ms", type=float, default=100.0, help="429s must arrive within this")
    p.add_argument("--max-ratio", type=float, default=2.0, help="admitted p99 / unloaded p99 limit")
    p.add_argument("--max-growth", type=float, default=0.05, help="resident memory growth limit")
    p.add_argument("--steer", action="append", default=[], help="NAME=STRENGTH for burst requests")
    p.add_argument("--soak", type=float, metavar="MINUTES", help="soak instead of burst")
    p.add_argument("--concurrency", type=int, help="soak: parallel clients (default max_batch)")
    p.add_argument("--sample-s", type=float, default=10.0, help="soak: memory sampling interval")
    p.add_argument("--out", help="also write the JSON report here")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    client = Client(args.url, api_key=args.api_key, new_tokens=args.new_tokens)
    try:
        if args.soak is not None:
            limit = args.soak * 60 + 120  # the soak's own deadline plus time to drain
            return await asyncio.wait_for(
                soak(client, args.soak, concurrency=args.concurrency, sample_s=args.sample_s), limit
            )
        steer = {k: float(v) for k, v in (s.split("=", 1) for s in args.steer)}
        report = burst(
            client,
            factor=args.factor,
            baseline=args.baseline,
            max_requests=args.max_requests,
            reject_ms=args.reject_ms,
            max_ratio=args.max_ratio,
            max_growth=args.max_growth,
            steer=steer or None,
        )
        return await asyncio.wait_for(report, args.max_seconds)
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = asyncio.run(run(args))
    except NotLoopback as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if report.get("ok" if report["mode"] == "burst" else "passed") else 1


if __name__ == "__main__":
    sys.exit(main())

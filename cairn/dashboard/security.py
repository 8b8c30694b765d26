"""What keeps a public dashboard safe to expose: security headers, body limits, a bounded rate limit.

- Headers are set in `on_response_prepare`, which every response passes through, error pages and
  file downloads included (aiohttp adds none of its own).
- The dashboard has no routes that take a body: a declared body over `MAX_BODY_BYTES` is 413
  before routing, other methods are 405 from the router.
- The rate limit is a token bucket per client address kept in an LRU of at most `max_clients`
  entries: a flood of distinct addresses evicts the oldest buckets, it never grows the table.
  (aiohttp-ratelimiter leaves its memory unbounded by default, hence our own.)
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

MAX_BODY_BYTES = 1024

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}


async def add_security_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare hook: the same headers on every response; no caching unless a handler chose it."""
    response.headers.update(SECURITY_HEADERS)
    response.headers["Server"] = "cairn-dashboard"
    response.headers.setdefault("Cache-Control", "no-cache")


class RateLimiter:
    """Token buckets (`rate` per second, `burst` deep) per client, at most `max_clients` of them."""

    def __init__(self, rate: float, burst: float, max_clients: int = 4096, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate must be > 0, burst >= 1 and max_clients >= 1")
        self.rate, self.burst, self.max_clients = rate, float(burst), max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # client -> [tokens, last refill]

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, client: str) -> float:
        """Take one token; 0.0 if allowed, else the seconds until the next token."""
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = [self.burst, now]
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate


def client_key(request: web.BaseRequest) -> str:
    """The address a bucket belongs to; IPv6 by /64, since one host usually owns a whole /64."""
    remote = request.remote or "unknown"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def rate_limit_middleware(limiter: RateLimiter):
    @web.middleware
    async def rate_limit(request: web.Request, handler):
        wait = limiter.acquire(client_key(request))
        if wait > 0:
            raise web.HTTPTooManyRequests(headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return await handler(request)

    return rate_limit


@web.middleware
async def body_limit(request: web.Request, handler):
    """Refuse a declared body over MAX_BODY_BYTES up front; no handler reads a body anyway."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
    return await handler(request)

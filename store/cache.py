"""The entity read cache: in process for the embedded default, Redis when configured.

Each key carries a *floor*: the lowest version a cached value may have. Invalidation raises the floor to
the version just committed and drops the value; a reader that loaded an older row from the database
before the commit cannot put it back, because a fill below the floor is refused. So once an event is
marked processed (which happens after invalidation), no read returns an older version of its entities.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

import orjson

from nftpulse.core.metrics import CACHE_INVALIDATIONS, CACHE_REQUESTS


class EntityCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...
    def fill(self, key: str, version: int, value: dict[str, Any]) -> None: ...
    def invalidate(self, versions: dict[str, int]) -> None: ...


class NoCache:
    """For processes that cannot see invalidations (an API beside separate workers, without Redis)."""

    def get(self, key: str) -> dict[str, Any] | None:
        CACHE_REQUESTS.labels("miss").inc()
        return None

    def fill(self, key: str, version: int, value: dict[str, Any]) -> None:
        return None

    def invalidate(self, versions: dict[str, int]) -> None:
        CACHE_INVALIDATIONS.inc(len(versions))


class MemoryCache:
    """A bounded LRU with TTL and version floors, safe across the activity thread pool and the API."""

    def __init__(self, max_entries: int = 100_000, ttl_s: float = 300.0) -> None:
        self._values: OrderedDict[str, tuple[int, float, dict[str, Any]]] = OrderedDict()
        self._floors: dict[str, int] = {}
        self._lock = threading.Lock()
        self._max = max_entries
        self._ttl = ttl_s

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            item = self._values.get(key)
            if item is None:
                CACHE_REQUESTS.labels("miss").inc()
                return None
            version, stored_at, value = item
            if version < self._floors.get(key, 0) or time.monotonic() - stored_at > self._ttl:
                del self._values[key]
                CACHE_REQUESTS.labels("stale").inc()
                return None
            self._values.move_to_end(key)
            CACHE_REQUESTS.labels("hit").inc()
            return value

    def fill(self, key: str, version: int, value: dict[str, Any]) -> None:
        with self._lock:
            if version < self._floors.get(key, 0):
                return
            self._values[key] = (version, time.monotonic(), value)
            self._values.move_to_end(key)
            while len(self._values) > self._max:
                old, _ = self._values.popitem(last=False)
                self._floors.pop(old, None)

    def invalidate(self, versions: dict[str, int]) -> None:
        with self._lock:
            for key, version in versions.items():
                if version > self._floors.get(key, 0):
                    self._floors[key] = version
                self._values.pop(key, None)
            # Floors only matter while a value could still be cached; keep them bounded too.
            if len(self._floors) > 4 * self._max:
                live = set(self._values)
                self._floors = {k: v for k, v in self._floors.items() if k in live}
        CACHE_INVALIDATIONS.inc(len(versions))


_FILL = """
local floor = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) < floor then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""

_INVALIDATE = """
for i, key in ipairs(KEYS) do
  local floor = tonumber(redis.call('GET', key .. ':floor') or '0')
  local v = tonumber(ARGV[i])
  if v > floor then redis.call('SET', key .. ':floor', ARGV[i], 'EX', ARGV[#ARGV]) end
  redis.call('DEL', key)
end
return #KEYS
"""


class RedisCache:
    """Shared by every API and worker process; the floor check and the write are one Lua script."""

    def __init__(self, url: str, ttl_s: float = 300.0, prefix: str = "pulse:entity:") -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._ttl = int(ttl_s)
        self._prefix = prefix
        self._fill = self._redis.register_script(_FILL)
        self._invalidate = self._redis.register_script(_INVALIDATE)

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = self._redis.get(self._prefix + key)
        except Exception:
            # A cache outage degrades to database reads; it must never fail a request.
            CACHE_REQUESTS.labels("error").inc()
            return None
        if raw is None:
            CACHE_REQUESTS.labels("miss").inc()
            return None
        CACHE_REQUESTS.labels("hit").inc()
        return orjson.loads(raw)  # type: ignore[no-any-return]

    def fill(self, key: str, version: int, value: dict[str, Any]) -> None:
        try:
            self._fill(
                keys=[self._prefix + key, self._prefix + key + ":floor"],
                args=[version, orjson.dumps(value), self._ttl],
            )
        except Exception:
            CACHE_REQUESTS.labels("error").inc()

    def invalidate(self, versions: dict[str, int]) -> None:
        if not versions:
            return
        keys = [self._prefix + k for k in versions]
        # Floors must outlive any value they guard; a day is far beyond a value's TTL.
        self._invalidate(keys=keys, args=[*versions.values(), 86_400])
        CACHE_INVALIDATIONS.inc(len(versions))

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except Exception:
            return False

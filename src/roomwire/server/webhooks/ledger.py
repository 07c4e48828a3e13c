"""Cluster-wide webhook state in Redis: the per-endpoint stream sequence numbers and the
grace holds, so that a leave held on one node is cancelled by a return on another.

One Lua script settles a batch of a node's facts in order, atomically against every other
node's batches: a ``hold`` marks a leave held (``SET ... PX``), an ``arrive`` deletes the mark
(found: the return cancels the leave, and the arrival is not sent), a ``release`` deletes it
at the end of the grace (not found: someone came back, the leave is not sent), a ``plain``
fact is always sent. A fact that is sent gets the next number of its stream for each endpoint
(``HINCRBY``-like ``INCR`` on one key per endpoint and stream, kept for 30 days after its
last use). Everything lives on the first Redis of ``redis_url`` (like the node-level keys).
"""

from __future__ import annotations

import json
from typing import Any

_SETTLE = """
local items = cjson.decode(ARGV[1])
local prefix = ARGV[2]
local hold_ms = tonumber(ARGV[3])
local out = {}
for i, it in ipairs(items) do
  local send = 1
  if it.o == 'hold' then
    redis.call('SET', prefix .. 'wh:held:' .. it.k, '1', 'PX', hold_ms)
    send = 0
  elseif it.o == 'arrive' then
    if redis.call('DEL', prefix .. 'wh:held:' .. it.k) == 1 then send = 0 end
  elseif it.o == 'release' then
    if redis.call('DEL', prefix .. 'wh:held:' .. it.k) == 0 then send = 0 end
  end
  local r = {send}
  if send == 1 then
    for j, s in ipairs(it.s) do
      local key = prefix .. 'wh:seq:' .. s
      r[j + 1] = redis.call('INCR', key)
      redis.call('EXPIRE', key, 2592000)
    end
  end
  out[i] = r
end
return out
"""


class Ledger:
    """The Redis side of a clustered webhook service."""

    def __init__(self, url: str, prefix: str, grace: float) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(url.split(",")[0].strip(),
                                                   socket_timeout=3.0,
                                                   socket_connect_timeout=3.0)
        self.prefix = prefix
        # A hold outlives its grace by a margin: the holder deletes it at the end of the
        # grace; the expiry only cleans up after a holder that died.
        self.hold_ms = int(grace * 1000) + 60_000
        self._sha: str | None = None

    async def settle(self, items: list[dict[str, Any]]) -> list[list[int]]:
        """``items``: ``{"o": op, "k": hold key, "s": [endpoint + "\\0" + stream, ...]}``.
        Returns per item ``[send, seq...]`` (seqs only when send is 1)."""
        if self._sha is None:
            self._sha = await self._redis.script_load(_SETTLE)
        args = (json.dumps(items, separators=(",", ":")), self.prefix, self.hold_ms)
        try:
            raw = await self._redis.evalsha(self._sha, 0, *args)
        except Exception as exc:
            if "NOSCRIPT" not in str(exc):
                raise
            raw = await self._redis.eval(_SETTLE, 0, *args)
        return [[int(v) for v in r] for r in raw]

    async def close(self) -> None:
        await self._redis.aclose()

"""Every Lua script of the Redis/Valkey stores, in one place.

Scripts exist where a read and a write must be one step. Each script touches keys of one hash
tag only (see :mod:`.keys`), so it runs unchanged on a single server and on a cluster.

The history scripts (``PUBLISH``, ``HISTORY``) are the Redis copy of the history rules written
in :mod:`pushgate.backends.history`; the comments name the rule numbers used there. They must
run inside Redis because the offset is assigned atomically with the append and the fan-out, and
a reader must see the meta hash and the list at the same instant.
"""

from __future__ import annotations

__all__ = [
    "ACK",
    "HISTORY",
    "LEASE_ACQUIRE",
    "LEASE_RELEASE",
    "PRESENCE_ADD",
    "PRESENCE_REMOVE",
    "PUBLISH",
    "RESET_IF_REWOUND",
]

# KEYS: meta, history[, idempotency key]. ARGV: data, size, ttl ms, meta ttl ms, candidate epoch,
# topic, publish cmd[, idempotency window ms]. Returns {epoch, offset}.
PUBLISH = """
if KEYS[3] then  -- a retry within the window: not applied again, answer the first position
  local first = redis.call('GET', KEYS[3])
  if first then
    local sep = string.find(first, ':', 1, true)
    return {string.sub(first, sep + 1), tonumber(string.sub(first, 1, sep - 1))}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then  -- rule 2: a missing meta key starts a new epoch with no history
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)  -- rule 1
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
if size > 0 and ttl > 0 then  -- rule 3: keep the newest size, for ttl after the newest
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('LTRIM', KEYS[2], -size, -1)
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('DEL', KEYS[2])
end
local meta_ttl = tonumber(ARGV[4])  -- rule 5: meta outlives the history
if ttl > meta_ttl then meta_ttl = ttl end
redis.call('PEXPIRE', KEYS[1], meta_ttl)
redis.call(ARGV[7], ARGV[6], 'P' .. offset .. ':' .. epoch .. ':' .. ARGV[1])
if KEYS[3] then redis.call('SET', KEYS[3], offset .. ':' .. epoch, 'PX', ARGV[8]) end
return {epoch, offset}
"""

# The stream's epoch and newest offset, as every reader sees them (rules 2 and 8: reading a stream
# that does not exist yet creates its epoch, so readers agree with the publisher that follows).
# KEYS[1] meta, KEYS[2] history; ARGV[1] candidate epoch, ARGV[2] meta ttl ms. Sets `epoch`, `offset`.
_CURRENT_POSITION = """
local epoch = redis.call('HGET', KEYS[1], 'e')
local offset = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  offset = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
end
"""

# Rule 4 (every publish appends or deletes the list, and the meta key outlives it) means list
# index i holds offset ``oldest + i``. KEYS: meta, history. ARGV: candidate epoch, meta ttl ms,
# has since (0/1), since epoch, since offset, limit (-1 = all).
# Returns {epoch, offset, complete, offset of the first entry, entries}.
HISTORY = _CURRENT_POSITION + """
local llen = redis.call('LLEN', KEYS[2])
local oldest = offset - llen + 1
local limit = tonumber(ARGV[6])
local complete = 1
local first = 0
if ARGV[3] == '1' then  -- rule 7
  local since = tonumber(ARGV[5])
  if ARGV[4] == epoch and since <= offset and since >= oldest - 1 then
    first = since + 1 - oldest
  else
    complete = 0
  end
elseif limit >= 0 and limit < llen then  -- rule 6
  first = llen - limit
end
local last = llen - 1
if limit >= 0 and first + limit - 1 < last then last = first + limit - 1 end
local entries = {}
if first <= last then entries = redis.call('LRANGE', KEYS[2], first, last) end
return {epoch, offset, complete, oldest + first, entries}
"""

# The rules of Broker.ack (pushgate/backends/broker.py; Python copy: ack_memory.apply_ack), atomic
# with reading the stream's epoch and offset. KEYS: meta, history, ack. ARGV: candidate epoch,
# meta ttl ms, ack epoch, ack offset, ack ttl ms. Returns {epoch, acknowledged offset}.
ACK = _CURRENT_POSITION + """
local base = 0  -- a stored ack of an older epoch counts as none
local stored = redis.call('GET', KEYS[3])
if stored then
  local sep = string.find(stored, ':', 1, true)
  if sep and string.sub(stored, sep + 1) == epoch then base = tonumber(string.sub(stored, 1, sep - 1)) or 0 end
end
if ARGV[3] ~= epoch then return {epoch, base} end  -- another epoch: ignored
local acked = tonumber(ARGV[4])
if acked > offset then acked = offset end  -- clamped to what was published
if acked < base then acked = base end  -- only forward
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  redis.call('SET', KEYS[3], acked .. ':' .. epoch, 'PX', ttl)
else
  redis.call('DEL', KEYS[3])
end
return {epoch, acked}
"""

# Broker.reset_if_rewound: a failover to a replica that missed the old primary's last writes
# leaves the stream behind what nodes have seen; the next publications would reuse offsets.
# Rewound = same epoch, and the newest offset is below the seen one, or the entry kept at the
# seen offset is not the seen data (already reused). Then a new epoch with no history (rule 2,
# as for lost keys). The check and the reset are one step, so of several nodes noticing at once
# one resets and the others find another epoch. KEYS: meta, history. ARGV: seen epoch, seen
# offset, has data (0/1), seen data, new epoch, meta ttl ms. Returns {new epoch, 0} or false.
RESET_IF_REWOUND = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if epoch ~= ARGV[1] then return false end
local top = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local seen = tonumber(ARGV[2])
local rewound = top < seen
if not rewound and ARGV[3] == '1' then
  local llen = redis.call('LLEN', KEYS[2])
  local index = seen - (top - llen + 1)
  if index >= 0 and index < llen then
    rewound = redis.call('LINDEX', KEYS[2], index) ~= ARGV[4]
  end
end
if not rewound then return false end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'e', ARGV[5], 'o', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {ARGV[5], 0}
"""

# KEYS: node conns, node users. ARGV: conn id, encoded user. Counts a user once per connection.
PRESENCE_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 and ARGV[2] ~= '' then
  redis.call('HINCRBY', KEYS[2], string.sub(ARGV[2], 2), 1)
end
return 0
"""

# KEYS: node conns, node users. ARGV: conn id. The user comes from the stored entry, not the caller.
PRESENCE_REMOVE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if v ~= '' then
    local u = string.sub(v, 2)
    if redis.call('HINCRBY', KEYS[2], u, -1) <= 0 then redis.call('HDEL', KEYS[2], u) end
  end
end
return 0
"""

# KEYS: lease. ARGV: holder, ttl ms. Take when free, renew when ours.
LEASE_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: holder.
LEASE_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

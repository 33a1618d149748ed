-- Queue one encoded message on each of several channel keys, as channels_redis 4 does.
-- KEYS: the channel sorted sets (prefix + non-local channel name), each at most once
-- ARGV: N members (random prefix + body), then N capacities, then now (float seconds),
--       stale cutoff (int seconds: members scored at or below it are expired), expiry (s)
-- Returns: a list of 1-based indexes of the keys that were full and got nothing.
local n = #KEYS
local now = ARGV[2 * n + 1]
local cutoff = ARGV[2 * n + 2]
local expiry = ARGV[2 * n + 3]
local full = {}
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, cutoff)
    if redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        full[#full + 1] = i
    end
end
return full

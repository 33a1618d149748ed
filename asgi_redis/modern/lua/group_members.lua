-- Drop members older than the group expiry and list the rest.
-- KEYS[1]: the group sorted set (prefix + ":group:" + group)
-- ARGV[1]: cutoff (int seconds): members added at or before it are gone
-- Returns: the channel names still in the group as ONE msgpack array: a reply of
-- 1,000 bulk strings costs the client ~2 ms to parse in pure Python, one blob ~50 us.
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
return cmsgpack.pack(redis.call('ZRANGE', KEYS[1], 0, -1))

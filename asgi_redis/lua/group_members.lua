-- Current members of a group: prune those added before the cutoff, list the rest.
-- KEYS[1] group key (sorted set)
-- ARGV[1] cutoff score: now - group_expiry

redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)

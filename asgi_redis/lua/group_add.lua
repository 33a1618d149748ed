-- Add or refresh one group member in one round trip.
-- KEYS[1] group key (sorted set)
-- ARGV[1] score: unix time of this add   ARGV[2] member channel   ARGV[3] group_expiry

redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1

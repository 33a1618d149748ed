-- KEYS[1] queue key   KEYS[2] channel statistics hash (same hash slot)
-- ARGV[1] now, unix ms   ARGV[2] expiry in ms
-- Returns {messages_count, channel_full_count, queue length, age in seconds of
-- the oldest live entry}; the age is read from the entry's deadline.

local now = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2])
local length = redis.call('LLEN', KEYS[1])
local age = 0
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, 99)) do
    local deadline = tonumber(string.sub(entry, 2, 14))
    if deadline and deadline > now then
        age = math.max(0, math.min(expiry, now - (deadline - expiry)))
        age = math.floor(age / 1000)
        break
    end
end
local counts = redis.call('HMGET', KEYS[2], 'messages_count', 'channel_full_count')
return {tonumber(counts[1] or '0'), tonumber(counts[2] or '0'), length, age}

-- Queue one message on each of N channels in one round trip
-- (N = 1 for send, the members on this shard for send_group).
-- Layout of asgi_redis 1.4.3: body in its own key (TTL expiry), its key
-- RPUSHed on the queue list (TTL expiry + 1), statistics counters beside.
--
-- KEYS[1]  global messages_count         KEYS[2]  global channel_full_count
-- then for channel i, with b = 2 + 4 * (i - 1):
--   KEYS[b+1] body key   KEYS[b+2] queue key
--   KEYS[b+3] channel messages_count   KEYS[b+4] channel channel_full_count
-- ARGV[1] expiry   ARGV[2] channel statistics TTL   ARGV[3] global statistics TTL
-- ARGV[4] number of distinct bodies B, ARGV[5 .. 4+B] the bodies
-- then for channel i: ARGV[4+B+2i-1] capacity, ARGV[4+B+2i] index of its body (1-based)
-- Returns the number of channels that were full (nothing queued on those).

local expiry = tonumber(ARGV[1])
local channel_stats_ttl = tonumber(ARGV[2])
local body_count = tonumber(ARGV[4])
local members = (#KEYS - 2) / 4

-- A queue entry whose body has expired can never be delivered; 1.4.3 let such
-- entries count against capacity, so a channel could stay "full" of nothing.
local function live_length(queue)
    local entries = redis.call('LRANGE', queue, 0, -1)
    local live = 0
    for _, body_key in ipairs(entries) do
        if redis.call('EXISTS', body_key) == 1 then
            live = live + 1
        else
            redis.call('LREM', queue, 1, body_key)
        end
    end
    return live
end

local sent, full = 0, 0
for i = 1, members do
    local b = 2 + 4 * (i - 1)
    local queue = KEYS[b + 2]
    local capacity = tonumber(ARGV[4 + body_count + 2 * i - 1])
    if redis.call('LLEN', queue) >= capacity and live_length(queue) >= capacity then
        full = full + 1
        redis.call('INCR', KEYS[b + 4])
        redis.call('EXPIRE', KEYS[b + 4], channel_stats_ttl)
    else
        local body = ARGV[4 + tonumber(ARGV[4 + body_count + 2 * i])]
        redis.call('SET', KEYS[b + 1], body, 'EX', expiry)
        redis.call('RPUSH', queue, KEYS[b + 1])
        redis.call('EXPIRE', queue, expiry + 1)
        sent = sent + 1
        redis.call('INCR', KEYS[b + 3])
        redis.call('EXPIRE', KEYS[b + 3], channel_stats_ttl)
    end
end

if sent > 0 then
    redis.call('INCRBY', KEYS[1], sent)
    redis.call('EXPIRE', KEYS[1], ARGV[3])
end
if full > 0 then
    redis.call('INCRBY', KEYS[2], full)
    redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return full

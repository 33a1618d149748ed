-- Queue one message on each of N channels in one round trip
-- (N = 1 for send, the members on this shard for send_group).
-- Layout of asgi_redis 1.4.3: body in its own key (TTL expiry), its key
-- RPUSHed on the queue list (TTL expiry + 1), statistics counters beside
-- (channel counters TTL 3600 s, global ones 86400 s). The counter names are
-- built here from the queue names: fewer arguments make a cheaper call.
--
-- KEYS: for channel i, KEYS[2i-1] its new body key, KEYS[2i] its queue key
-- ARGV[1] expiry   ARGV[2] statistics prefix   ARGV[3] length of the key prefix
-- ARGV[4] number of distinct bodies B, ARGV[5 .. 4+B] the bodies
-- then for channel i: ARGV[4+B+2i-1] capacity, ARGV[4+B+2i] index of its body (1-based)
-- Returns the number of channels that were full (nothing queued on those).

local CHANNEL_STATS_TTL = 3600
local GLOBAL_STATS_TTL = 86400

local expiry = tonumber(ARGV[1])
local stats_prefix = ARGV[2]
local prefix_length = tonumber(ARGV[3])
local body_count = tonumber(ARGV[4])
local first_target = 4 + body_count

-- A queue entry whose body has expired can never be delivered; 1.4.3 let such
-- entries count against capacity, so a channel could stay "full" of nothing.
local function live_length(queue)
    local live = 0
    for _, body_key in ipairs(redis.call('LRANGE', queue, 0, -1)) do
        if redis.call('EXISTS', body_key) == 1 then
            live = live + 1
        else
            redis.call('LREM', queue, 1, body_key)
        end
    end
    return live
end

local function count(key, by, ttl)
    redis.call('INCRBY', key, by)
    redis.call('EXPIRE', key, ttl)
end

local sent, full = 0, 0
for i = 1, #KEYS / 2 do
    local body_key, queue = KEYS[2 * i - 1], KEYS[2 * i]
    local capacity = tonumber(ARGV[first_target + 2 * i - 1])
    local channel_stats = stats_prefix .. string.sub(queue, prefix_length + 1) .. ':'
    if redis.call('LLEN', queue) >= capacity and live_length(queue) >= capacity then
        full = full + 1
        count(channel_stats .. 'channel_full_count', 1, CHANNEL_STATS_TTL)
    else
        redis.call('SET', body_key, ARGV[4 + tonumber(ARGV[first_target + 2 * i])], 'EX', expiry)
        redis.call('RPUSH', queue, body_key)
        redis.call('EXPIRE', queue, expiry + 1)
        sent = sent + 1
        count(channel_stats .. 'messages_count', 1, CHANNEL_STATS_TTL)
    end
end

if sent > 0 then
    count(stats_prefix .. '#global#:messages_count', sent, GLOBAL_STATS_TTL)
end
if full > 0 then
    count(stats_prefix .. '#global#:channel_full_count', full, GLOBAL_STATS_TTL)
end
return full

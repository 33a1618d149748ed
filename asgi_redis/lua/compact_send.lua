-- One message on one queue: the usual send, kept to the fewest commands.
-- KEYS[1] queue (list)   KEYS[2] its channel counters (hash)
-- KEYS[3] the global counters of its hash slot (hash; all three share the slot)
-- ARGV[1] now, unix ms by the sender's clock   ARGV[2] capacity   ARGV[3] the entry
-- ARGV[4] "1": set the three TTLs again; "0": this sender did so less than
--   REFRESH seconds ago (docs/compact-layout.md, "TTLs")   ARGV[5] queue TTL in ms
-- Returns 1 when the channel was full (nothing stays queued), else 0.
--
-- An accepted send is three commands (RPUSH, two HINCRBY) unless a key was just
-- created or the sender asks for its TTLs: a TTL is set again at most once per
-- REFRESH seconds per sender and key, so each TTL below carries REFRESH seconds
-- of slack, and a key this call creates gets its TTL at once whatever ARGV[4].

local REFRESH = 60  -- asgi_redis/layouts/compact.py REFRESH_SECONDS
local CHANNEL_STATS_TTL = 3600 + REFRESH
local GLOBAL_STATS_TTL = 86400 + REFRESH
-- Dead head entries dropped by a send that finds no room, beyond the room it
-- needs (see compact_send_runs.lua: the same bounded trim)
local TRIM_LIMIT = 100

local queue, stats, global = KEYS[1], KEYS[2], KEYS[3]
local refresh = ARGV[4] == '1'

local function count(key, field, ttl)
    -- a counter of 1 is a field, maybe a hash, this call created: it has no TTL yet
    if redis.call('HINCRBY', key, field, 1) == 1 or refresh then
        redis.call('EXPIRE', key, ttl)
    end
end

local length = redis.call('RPUSH', queue, ARGV[3])
if length > tonumber(ARGV[2]) then
    local now, over, dropped = tonumber(ARGV[1]), length - tonumber(ARGV[2]), 0
    while dropped < over + TRIM_LIMIT do
        local head = redis.call('LINDEX', queue, 0)
        local deadline = head and tonumber(string.sub(head, 2, 14))
        if not deadline or deadline > now then
            break  -- live (or not an entry of this layout: left for the receiver to refuse)
        end
        redis.call('LPOP', queue)
        dropped = dropped + 1
    end
    if dropped < over then
        redis.call('RPOP', queue)  -- ours: the script runs alone, it is the tail
        count(stats, 'channel_full_count', CHANNEL_STATS_TTL)
        count(global, 'channel_full_count', GLOBAL_STATS_TTL)
        return 1
    end
    length = length - dropped
end
if length == 1 or refresh then
    redis.call('PEXPIRE', queue, ARGV[5])
end
count(stats, 'messages_count', CHANNEL_STATS_TTL)
count(global, 'messages_count', GLOBAL_STATS_TTL)
return 0

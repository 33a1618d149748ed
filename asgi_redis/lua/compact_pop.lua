-- KEYS queue keys of the compact layout, in the order to try them
-- ARGV[1] now, unix ms by the receiver's clock
-- Returns {queue key, entry} for the oldest live entry of the first non-empty
-- queue, or false when every queue is empty. Expired entries are dropped on the
-- way (never delivered); the entry is handed back whole (the receiver reads its
-- deadline, kind and message), so a receive is one command per entry.

local now = tonumber(ARGV[1])
for i = 1, #KEYS do
    while true do
        local entry = redis.call('LPOP', KEYS[i])
        if not entry then
            break
        end
        -- an entry of another layout version has no deadline here: hand it over,
        -- the receiver refuses it loudly
        local deadline = tonumber(string.sub(entry, 2, 14))
        if string.sub(entry, 1, 1) ~= '1' or not deadline or deadline > now then
            return {KEYS[i], entry}
        end
    end
end
return false

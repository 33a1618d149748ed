-- Non-blocking receive in one round trip: pop the oldest entry of the first
-- non-empty queue, read its body and delete it (1.4.3 needed three trips).
-- Entries whose body has expired are dropped and the search goes on.
-- KEYS: queue keys, in the order to try them
-- Returns {queue key, body} or false when every queue is empty.

for i = 1, #KEYS do
    while true do
        local body_key = redis.call('LPOP', KEYS[i])
        if not body_key then
            break
        end
        local body = redis.call('GET', body_key)
        if body then
            redis.call('DEL', body_key)
            return {KEYS[i], body}
        end
    end
end
return false

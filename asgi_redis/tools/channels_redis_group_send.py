"""Times channels_redis's ``group_send``; the benchmark runs it in another interpreter.

    python channels_redis_group_send.py URL MEMBERS PROCESSES REPEATS

Needs channels_redis 4 (asgiref 3), so it imports nothing of asgi_redis (whose
asgiref 1.1.2 cannot share an interpreter with it). ``PROCESSES`` layer objects
each make ``MEMBERS / PROCESSES`` channels with ``new_channel()``, as that many
receiving processes would; one more layer sends. Prints one JSON object: the
median milliseconds per ``group_send``. Its keys are removed at the end.
"""

import asyncio
import json
import statistics
import sys
import time


async def main(url: str, members: int, processes: int, repeats: int) -> dict:
    from channels_redis.core import RedisChannelLayer

    def layer():
        return RedisChannelLayer(hosts=[url], prefix="asgi-bench-cr", capacity=10 ** 9, expiry=60)

    receivers = [layer() for _ in range(processes)]
    sender = layer()
    try:
        for number in range(members):
            await sender.group_add("bench", await receivers[number % processes].new_channel())
        await sender.group_send("bench", {"type": "warm"})
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            await sender.group_send("bench", {"type": "chat.message", "text": "hello"})
            times.append(time.perf_counter() - started)
        return {"ms": statistics.median(times) * 1000}
    finally:
        await sender.flush()


if __name__ == "__main__":
    url, members, processes, repeats = sys.argv[1], *map(int, sys.argv[2:5])
    print(json.dumps(asyncio.run(main(url, members, processes, repeats))))

"""WebSocket consumers: echo, strictly ordered echo, and a broadcast group."""
import random
import time

from channels import Group
from channels.sessions import enforce_ordering

ROOM = "e2e-room"


def accept(message):
    message.reply_channel.send({"accept": True})


def echo(message):
    if message.content.get("bytes") is not None:
        message.reply_channel.send({"bytes": message.content["bytes"]})
    else:
        message.reply_channel.send({"text": message.content["text"]})


@enforce_ordering
def ordered_connect(message):
    accept(message)


@enforce_ordering
def ordered_echo(message):
    # a little jitter so the two workers really do overtake each other
    time.sleep(random.random() * 0.002)
    # Channels 1 holds a consumer's sends until it returns, which is after
    # enforce_ordering has let the next message run; send the reply now
    message.reply_channel.send({"text": message.content["text"]}, immediately=True)


def room_connect(message):
    Group(ROOM).add(message.reply_channel)
    accept(message)


def room_receive(message):
    Group(ROOM).send({"text": message.content["text"]})


def room_disconnect(message):
    Group(ROOM).discard(message.reply_channel)


def ignore(message):
    """http.disconnect is sent for every request; read it so it does not pile up."""

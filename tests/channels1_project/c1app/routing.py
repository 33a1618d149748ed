from channels.routing import route

from . import consumers

channel_routing = [
    route("websocket.connect", consumers.accept, path=r"^/echo/$"),
    route("websocket.receive", consumers.echo, path=r"^/echo/$"),
    route("websocket.connect", consumers.ordered_connect, path=r"^/ordered/$"),
    route("websocket.receive", consumers.ordered_echo, path=r"^/ordered/$"),
    route("websocket.connect", consumers.room_connect, path=r"^/room/$"),
    route("websocket.receive", consumers.room_receive, path=r"^/room/$"),
    route("websocket.disconnect", consumers.room_disconnect, path=r"^/room/$"),
    route("websocket.disconnect", consumers.ignore),
    route("http.disconnect", consumers.ignore),
]

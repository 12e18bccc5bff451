"""``newsworker api --workers N``: keep Nagle's algorithm off on client connections.

With several worker processes uvicorn binds the listening socket itself
(``Config.bind_socket``) with ``proto`` 0; accepted sockets inherit it, and asyncio
turns on ``TCP_NODELAY`` only for sockets that say ``IPPROTO_TCP``.  Every keep-alive
request after a connection's first then waited for the client's delayed ACK: 40 ms
more for a page of articles here (Kludex/uvicorn#3149).  The listener is rebuilt on
the same descriptor with its protocol stated, so every connection gets ``TCP_NODELAY``."""

from __future__ import annotations

import socket
from typing import Any


def guard_listener_protocol() -> None:
    """Install the guard (once; harmless when uvicorn already states the protocol)."""
    from uvicorn.config import Config

    original = Config.bind_socket
    if getattr(original, "newsworker_guard", False):
        return

    def bind_socket(self: Any) -> socket.socket:
        sock = original(self)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto != socket.IPPROTO_TCP:
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        return sock

    bind_socket.newsworker_guard = True  # type: ignore[attr-defined]
    Config.bind_socket = bind_socket  # type: ignore[method-assign]

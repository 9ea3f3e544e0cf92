"""Serve an app with uvicorn on a listening socket the test hands down: ``APP FD``.

uvicorn's ``--fd`` option takes the descriptor for a Unix socket (it labels it
``AF_UNIX``), so client addresses would read wrong; this is what ``uvicorn.run()`` does
with the socket labelled right. The server, its signal handling included, is uvicorn's own.
"""

from __future__ import annotations

import socket
import sys

import uvicorn


def main() -> None:
    app, fd = sys.argv[1], int(sys.argv[2])
    config = uvicorn.Config(
        app, http="h11", ws="none", lifespan="on", access_log=False, log_level="warning"
    )
    server = uvicorn.Server(config)
    server.run(sockets=[socket.socket(fileno=fd)])
    if not server.started:
        sys.exit(3)


if __name__ == "__main__":
    main()

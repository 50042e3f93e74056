"""moto's S3 and SQS behind a keep-alive HTTP/1.1 server (waitress), like the real
endpoints: moto's own server (werkzeug's) closes the connection after every answer, so
each request of a client would pay a new TCP connection there and nowhere else.

    python -m bench.moto_keepalive PORT
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    import waitress
    from moto.server import DomainDispatcherApplication, create_backend_app

    port = int((argv or sys.argv[1:])[0])
    app = DomainDispatcherApplication(create_backend_app)
    waitress.serve(app, host="127.0.0.1", port=port, threads=24, connection_limit=200,
                   _quiet=True)


if __name__ == "__main__":
    main()

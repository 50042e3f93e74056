"""moto's S3 and SQS behind a keep-alive HTTP/1.1 server (waitress), like the real
endpoints: moto's own server (werkzeug's) closes the connection after every answer, so
each request of a client would pay a new TCP connection there and nowhere else.

    python -m bench.moto_keepalive PORT
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from moto.server import DomainDispatcherApplication, create_backend_app
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser
    from waitress.server import create_server

    class Parser(HTTPRequestParser):
        """No ``100 Continue`` for a request without a body: waitress would then wait
        for that body forever (botocore sends ``Expect: 100-continue`` on every PUT, an
        empty one included)."""

        def parse_header(self, header_plus: bytes) -> None:
            super().parse_header(header_plus)
            if not self.chunked and not self.content_length:
                self.expect_continue = False

    class Channel(HTTPChannel):
        parser_class = Parser

    port = int((argv or sys.argv[1:])[0])
    server = create_server(DomainDispatcherApplication(create_backend_app), host="127.0.0.1",
                           port=port, threads=24, connection_limit=200)
    server.channel_class = Channel
    server.run()


if __name__ == "__main__":
    main()

"""An S3 API server (moto's) that can go down and come back on the same port, its data kept, like a real outage.

``python -m tests.reliability.s3_server --port P --bucket B`` serves moto's S3 on 127.0.0.1:P, creates B, prints
``ready`` and then obeys one command per stdin line:

* ``down``: stop accepting, close the listening socket (clients get *connection refused*), wait for the
  requests in progress to end; prints ``down``.
* ``up``: listen again on the same port, with every bucket and object still there; prints ``up``.

Responses are HTTP/1.0 (one request per connection): no idle keep-alive connection outlives ``down``, so the
store is really unreachable while it is down. moto's state lives in this process, which is why the server
is stopped and restarted here rather than killed (moto has no persistence).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server


class OneRequestPerConnection(MotoRequestHandler):
    protocol_version = "HTTP/1.0"


class S3Server:
    def __init__(self, port: int) -> None:
        self.port = port
        self.app = DomainDispatcherApplication(create_backend_app)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def up(self) -> None:
        server = make_server("127.0.0.1", self.port, self.app, threaded=True, request_handler=OneRequestPerConnection)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def down(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join()
        self._server = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.s3_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", required=True)
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    server = S3Server(args.port)
    server.up()
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{args.port}", region_name="us-east-1").create_bucket(
        Bucket=args.bucket)
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "down":
            server.down()
        elif command == "up":
            server.up()
        else:
            print(f"unknown command {command!r}", flush=True)
            continue
        print(command, flush=True)
    server.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

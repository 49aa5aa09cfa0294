"""The marketplace app plus one periodic task that writes its process id: to see who runs it."""

from __future__ import annotations

import os

from flask import Flask

from marketplace import create_app as marketplace_app
from marketplace import periodic


def create_app() -> Flask:
    app = marketplace_app()
    path = os.environ["JISHI_PROBE_FILE"]

    def probe(_app: Flask) -> None:
        with open(path, "a") as out:
            out.write(f"{os.getpid()}\n")

    periodic.register(app, "probe", 0.1, probe)
    return app


if __name__ == "__main__":
    import sys

    from marketplace import serving

    serving.serve(
        create_app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        processes=int(sys.argv[2]),
        threads=2,
        graceful_timeout_s=5,
    )

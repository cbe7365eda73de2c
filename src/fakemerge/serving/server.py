"""Run the app under uvicorn with a graceful shutdown: on SIGTERM/SIGINT the pool stops admitting
(new requests get 503, `/ready` turns 503 so a balancer stops sending), admitted requests finish within
the time limit, then jobs that never started are cancelled and their temp folders removed.
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from fakemerge.serving.settings import ServeSettings


class DrainingServer(uvicorn.Server):
    def handle_exit(self, sig, frame) -> None:
        self.config.app.state.pool.drain()
        super().handle_exit(sig, frame)


def serve(app: FastAPI, settings: ServeSettings, host: str, port: int, log_level: str = "info") -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=int(settings.timeout_s) + 5)
    DrainingServer(config).run()

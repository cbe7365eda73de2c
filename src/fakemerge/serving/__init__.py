"""Web service: `POST /v1/detect`, `GET /v1/model`, `/health`, `/ready` and an upload page at `/`.

Modules: `app` (routes), `uploads` (streaming multipart with size and type limits), `workers` (bounded
inference pool), `analysis` (the one door to the media layer and `detect()`), `card` (model card),
`errors` (the one error shape), `settings`, `server` (uvicorn with a draining shutdown), `static/` (page).
"""

from fakemerge.serving.app import create_app
from fakemerge.serving.settings import ServeSettings, build_settings

__all__ = ["ServeSettings", "build_settings", "create_app"]

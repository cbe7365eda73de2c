"""What an operator tunes: workers, queue, limits, detection defaults (CLI options and env vars set them).

Why these bounds: every admitted request holds one slot from its first byte to its answer, so at most
`workers + queue` uploads sit on disk (each ≤ `max_upload_mb`) and at most `workers` decode at once
(each ≤ `max_pixels` pixels), which bounds disk and memory whatever clients send.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fakemerge.config import first_error
from fakemerge.errors import InputError


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(1, ge=1, le=64, description="inference threads")
    queue: int = Field(8, ge=0, le=4096, description="requests admitted beyond the running ones")
    max_upload_mb: float = Field(100, gt=0, description="largest upload accepted (MiB)")
    max_pixels: int = Field(40_000_000, ge=1, description="largest image or video frame (width x height)")
    timeout_s: float = Field(60, gt=0, description="per request: upload, wait and analysis")
    frames: int = Field(8, ge=1, description="default frames sampled per video")
    max_frames: int = Field(64, ge=1, description="most frames a request may ask for")
    agg: Literal["mean", "max", "topk"] = "mean"
    topk: int = Field(3, ge=1)
    face: str = "none"
    no_face: Literal["whole", "skip", "error"] = "whole"
    tmp_dir: Path | None = Field(None, description="where uploads are spooled (default: the system temp dir)")
    docs: bool = True

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    @property
    def slots(self) -> int:
        return self.workers + self.queue


def build_settings(**values) -> ServeSettings:
    """Validated settings; a bad value is one line naming the setting (exit 2 from the CLI)."""
    try:
        settings = ServeSettings(**values)
    except ValidationError as e:
        where, msg = first_error(e, "settings")
        raise InputError(f"serve setting {where}: {msg}") from None
    if settings.frames > settings.max_frames:
        raise InputError(f"serve setting frames: {settings.frames} is above max_frames {settings.max_frames}")
    if settings.tmp_dir is not None and not settings.tmp_dir.is_dir():
        raise InputError(f"serve setting tmp_dir: {settings.tmp_dir} is not a folder")
    return settings

"""``GET /v1/models``."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from triptych_workers.protocol.base import ResponseModel


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "triptych"


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)

"""``POST /v1/completions`` (the legacy text endpoint): request, response, streamed chunks."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import Field

from triptych_workers.protocol.base import ResponseModel
from triptych_workers.protocol.common import SamplingRequest, TokenIds, Usage

Prompt = (
    Annotated[str, Field()]
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[int], Field(min_length=1)]
    | Annotated[list[list[int]], Field(min_length=1)]
)


class CompletionRequest(SamplingRequest):
    prompt: Prompt
    max_tokens: Annotated[int, Field(ge=1)] | None = 16  # OpenAI's default for this endpoint
    suffix: str | None = None
    echo: bool = False
    best_of: Annotated[int, Field(ge=1, le=128)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    """Number of alternatives per token (an integer here, unlike chat's boolean)."""


class CompletionLogprobs(ResponseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(ResponseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length", "content_filter"] | None = None
    logprobs: CompletionLogprobs | None = None
    token_ids: TokenIds = None


class CompletionResponse(ResponseModel):
    """A completion, or (streamed, with ``usage`` None until the last chunk) one chunk of it: OpenAI uses the
    same ``text_completion`` object for both."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    prompt_token_ids: TokenIds = None

    def to_sse(self) -> str:
        return f"data: {self.model_dump_json()}\n\n"

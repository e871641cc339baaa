"""Pieces shared by the chat and completions endpoints: sampling fields, usage, streaming options."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, model_validator

from triptych_workers.protocol.base import InvalidRequestError, OpenAIBaseModel, ResponseModel

MAX_STOP_SEQUENCES = 16


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = None
    """Send one last chunk with ``usage`` and no choices before ``[DONE]``."""


class SamplingRequest(OpenAIBaseModel):
    """Fields both generation endpoints share (OpenAI's ranges), plus vLLM's widely used extensions.

    What is honoured where: every sampling field here (temperature, top_p, max_tokens, stop, seed,
    presence/frequency penalties, logit_bias, top_k, min_p, repetition_penalty, ignore_eos) reaches the
    engine through ``SamplingParams`` (the frontend's ``sampling_from``) and, in every mode, the prefill and
    decode workers through ``SamplingMessage``; the reference backend, the only one Triptych runs so far,
    applies each with vLLM's semantics (``engines/reference/engine.py``, ``TokenSampler``). ``n`` other than 1
    is refused with a 400; ``user`` is accepted and not used.
    """

    report_ignored_fields = True

    model: str = Field(min_length=1)
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None
    # vLLM's extensions.
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    ignore_eos: bool = False
    """Keep generating past the end-of-sequence token, up to ``max_tokens`` (load tests)."""
    return_token_ids: bool = False
    """Add the prompt's token ids (``prompt_token_ids``) and each choice's generated ones (``token_ids``) to
    the response, as vLLM does: what exact comparisons across deployments and RL rollouts need."""

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> Self:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        return self

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage_in_stream(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def _absent(value: object) -> bool:
    return value is None


# A response field that only appears when asked for (``return_token_ids``): OpenAI's clients never see it.
TokenIds = Annotated[list[int] | None, Field(exclude_if=_absent)]


class PromptTokensDetails(ResponseModel):
    cached_tokens: int = 0


class Usage(ResponseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> Usage:
        details = None if cached_tokens is None else PromptTokensDetails(cached_tokens=cached_tokens)
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=details,
        )

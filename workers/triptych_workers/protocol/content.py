"""Chat messages and their content parts, multimodal ones included.

Parts are discriminated on ``type`` and messages on ``role``, so a wrong part type is reported at the exact
place it occurs. ``video_url`` and ``audio_url`` are vLLM's extensions (sent through the openai client's
``extra_body`` or as untyped dicts); ``uuid`` on a media part lets a client name the item itself, which then
overrides the content hash as the item's identity.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from triptych_workers.protocol.base import OpenAIBaseModel


class TextPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ImageURL(OpenAIBaseModel):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImageURLPart(OpenAIBaseModel):
    type: Literal["image_url"]
    image_url: ImageURL
    uuid: str | None = None


_AUDIO_MIME = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "ogg": "audio/ogg"}


class InputAudio(OpenAIBaseModel):
    data: str = Field(min_length=1)
    """Base64 of the audio file (not a URL)."""
    format: Literal["wav", "mp3", "flac", "ogg"]

    def to_data_url(self) -> str:
        """The same bytes as a ``data:`` URL, so the media connector is the one path for every source."""
        return f"data:{_AUDIO_MIME[self.format]};base64,{self.data}"


class InputAudioPart(OpenAIBaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio
    uuid: str | None = None


class VideoURL(OpenAIBaseModel):
    url: str = Field(min_length=1)


class VideoURLPart(OpenAIBaseModel):
    type: Literal["video_url"]
    video_url: VideoURL
    uuid: str | None = None


class AudioURL(OpenAIBaseModel):
    url: str = Field(min_length=1)


class AudioURLPart(OpenAIBaseModel):
    type: Literal["audio_url"]
    audio_url: AudioURL
    uuid: str | None = None


class RefusalPart(OpenAIBaseModel):
    type: Literal["refusal"]
    refusal: str


UserContentPart = Annotated[
    TextPart | ImageURLPart | InputAudioPart | VideoURLPart | AudioURLPart, Field(discriminator="type")
]
MediaPart = ImageURLPart | InputAudioPart | VideoURLPart | AudioURLPart
AssistantContentPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


class FunctionCall(OpenAIBaseModel):
    name: str
    arguments: str
    """JSON text, as the model produced it (not parsed: it may not be valid JSON)."""


class ToolCall(OpenAIBaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(OpenAIBaseModel):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(OpenAIBaseModel):
    """OpenAI's newer name for system instructions; treated as a system message."""

    role: Literal["developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(OpenAIBaseModel):
    role: Literal["user"]
    content: str | list[UserContentPart]
    name: str | None = None

    def media_parts(self) -> list[MediaPart]:
        if isinstance(self.content, str):
            return []
        return [p for p in self.content if not isinstance(p, TextPart)]


class AssistantMessage(OpenAIBaseModel):
    role: Literal["assistant"]
    content: str | list[AssistantContentPart] | None = None
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(OpenAIBaseModel):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


ChatMessage = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage,
    Field(discriminator="role"),
]


def message_text(
    message: SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage,
) -> str:
    """The text of a message with media parts left out (templates place media by their own markers)."""
    content: Any = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, TextPart))

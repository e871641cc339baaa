"""What an engine raises: ``EngineError`` (the server's fault, a 500) and the client errors an engine finds
in a request (each a 400 naming its parameter)."""

from __future__ import annotations

from triptych_workers.errors import ClientError, TriptychError


class EngineError(TriptychError):
    """An engine failed in a way the client cannot fix (a server-side bug or a broken model directory)."""


class ModelDirError(EngineError):
    """The model directory is missing, incomplete or was written for another configuration."""


class UnsupportedModalityError(ClientError):
    """The model has no encoder for this modality."""

    status = 400
    code = "unsupported_modality"


class PromptTooLongError(ClientError):
    """Prompt plus requested tokens exceed the model's context window."""

    status = 400
    code = "context_length_exceeded"


class InvalidEngineInputError(ClientError):
    """A request the engine cannot run as given (mismatched placeholders and media, bad sampling values)."""

    status = 400
    code = "invalid_engine_input"

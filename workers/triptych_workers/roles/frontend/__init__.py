"""The frontend role: the OpenAI-compatible server (torch-free).

A request's path: ``router`` parses it (``protocol``) and hands it to its endpoint's serving class
(``serving_chat``, ``serving_completion``, on the shared flow of ``serving``), which fetches every media
part and decodes it off the event loop (``media``), renders the prompt with the backend's torch-free
prompter (from the engine registry; no backend is named here), runs ``Pipeline.generate`` and answers with
one response or a stream of chunks. ``errors`` maps every exception to an OpenAI error body; ``app``
assembles the app and runs the process.
"""

from triptych_workers.roles.frontend.app import create_app, run_frontend
from triptych_workers.roles.frontend.errors import (
    DeadlineExceeded,
    ModelNotFound,
    Overloaded,
    Unsupported,
    error_body,
    error_sse,
)
from triptych_workers.roles.frontend.media import MediaLoader
from triptych_workers.roles.frontend.serving import sampling_from

__all__ = [
    "DeadlineExceeded",
    "MediaLoader",
    "ModelNotFound",
    "Overloaded",
    "Unsupported",
    "create_app",
    "error_body",
    "error_sse",
    "run_frontend",
    "sampling_from",
]

"""Run in the vLLM venv (`hack/backend-venv vllm`): how vLLM 0.32 itself renders requests, for
tests/integration/backends/test_vllm_render.py to compare with Triptych's frontend renderer.

Reads JSON on stdin::

    {"models": [{"path": DIR, "requests": [{"messages": [...], "token_ids": [...], "content_parts": [...]}]}]}

and for every request answers with what vLLM computes, through its own code and nothing standing in:

- ``chat``: an OpenAI chat request as vLLM's server renders it (its ``ChatCompletionRequest`` and the
  renderer's ``render_chat`` as ``preprocess_chat`` calls them: chat template resolution and content-format
  detection, tokenization, media parsing from the data URLs, the multimodal processor's expansion): the
  prompt ids a plain vLLM server would run, and each item's placeholder range.
- ``generate``: the token API request Triptych's sidecar sends (``/inference/v1/generate``: the collapsed
  ``token_ids`` and each item as a content part), built the way vLLM's scale-out serving builds it (its
  multimodal item tracker, then ``render_cmpl``): the expanded ids vLLM would return and check against.

No engine starts and no weights load: only the config and the renderer (tokenizer, processor).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from typing import Any

# vLLM logs to stdout: the answer goes to the original stdout, everything else to stderr.
ANSWER = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Imported by name: this file runs in the vLLM venv, the project's venv (mypy's) has no vLLM.
vllm: Any = importlib.import_module("vllm")
EngineArgs: Any = importlib.import_module("vllm.engine.arg_utils").EngineArgs
ChatCompletionRequest: Any = importlib.import_module(
    "vllm.entrypoints.openai.chat_completion.protocol"
).ChatCompletionRequest
AsyncMultiModalItemTracker: Any = importlib.import_module(
    "vllm.renderers.chat_utils"
).AsyncMultiModalItemTracker
renderer_from_config: Any = importlib.import_module("vllm.renderers.registry").renderer_from_config


def _placeholders(engine_input: dict[str, Any]) -> dict[str, list[list[int]]]:
    ranges = engine_input.get("mm_placeholders") or {}
    return {m: [[int(r.offset), int(r.length)] for r in rs] for m, rs in ranges.items()}


def _answer(engine_input: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt_token_ids": [int(t) for t in engine_input["prompt_token_ids"]],
        "placeholders": _placeholders(engine_input),
    }


def _chat(renderer: Any, model_config: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """As vllm/renderers/online_renderer.py's preprocess_chat renders a chat request (no tools, the
    server's defaults: its chat template, content format "auto", the model's media I/O defaults)."""
    request = ChatCompletionRequest(model="m", messages=messages)
    mm_config = model_config.multimodal_config
    chat_params = request.build_chat_params(None, "auto").with_defaults(
        {"tools": None, "tokenize": False},
        default_media_io_kwargs=mm_config.media_io_kwargs if mm_config else None,
        default_mm_processor_kwargs=None,
    )
    _, (engine_input,) = renderer.render_chat(
        [request.messages], chat_params, request.build_tok_params(model_config)
    )
    return _answer(engine_input)


def _generate(renderer: Any, model_config: Any, request: dict[str, Any]) -> dict[str, Any]:
    """As vllm/entrypoints/scale_out/token_in_token_out/serving.py builds a request with content parts."""
    tracker = AsyncMultiModalItemTracker(model_config)
    parser = tracker.create_parser()
    for part in request["content_parts"]:
        parse = {
            "image_url": parser.parse_image,
            "audio_url": parser.parse_audio,
            "video_url": parser.parse_video,
        }
        parse[part["type"]](part["url"], part.get("uuid"))
    mm_data, mm_uuids = asyncio.run(tracker.resolve_items())
    prompt: dict[str, Any] = {"prompt_token_ids": request["token_ids"]}
    if mm_data:
        prompt["multi_modal_data"] = mm_data
    if mm_uuids:
        prompt["multi_modal_uuids"] = mm_uuids
    (engine_input,) = renderer.render_cmpl([prompt])
    return _answer(engine_input)


def main() -> None:
    job = json.load(sys.stdin)
    out = []
    for model in job["models"]:
        config = EngineArgs(model=model["path"], dtype="float32", max_model_len=4096).create_engine_config()
        renderer = renderer_from_config(config)
        results = [
            {
                "chat": _chat(renderer, config.model_config, request["messages"]),
                "generate": _generate(renderer, config.model_config, request),
            }
            for request in model["requests"]
        ]
        out.append({"architecture": config.model_config.architecture, "results": results})
    json.dump({"vllm": vllm.__version__, "models": out}, ANSWER)
    ANSWER.flush()


if __name__ == "__main__":
    main()

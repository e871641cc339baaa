"""The OpenAI routes: each parses its body and hands it to its endpoint's serving class."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from triptych_workers.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    parse_request,
)
from triptych_workers.roles.frontend.serving_chat import OpenAIServingChat
from triptych_workers.roles.frontend.serving_completion import OpenAIServingCompletion


def api_router(model_name: str, chat: OpenAIServingChat, completion: OpenAIServingCompletion) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def models() -> Response:
        return JSONResponse(ModelList(data=[ModelCard(id=model_name)]).model_dump(mode="json"))

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await chat.run(request, parse_request(ChatCompletionRequest, await request.body()))

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await completion.run(request, parse_request(CompletionRequest, await request.body()))

    return router

"""``POST /v1/chat/completions``: messages with media parts in, an assistant message (or its deltas) out."""

from __future__ import annotations

import asyncio
from functools import partial

from triptych_workers.engines.media import MediaItem, RenderedPrompt
from triptych_workers.protocol import (
    AssistantResponseMessage,
    ChatChunkChoice,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    Usage,
)
from triptych_workers.roles.frontend.errors import Unsupported
from triptych_workers.roles.frontend.serving import OpenAIServing, Output


class OpenAIServingChat(OpenAIServing[ChatCompletionRequest]):
    id_prefix = "chatcmpl-"

    async def render(self, body: ChatCompletionRequest) -> tuple[RenderedPrompt, list[MediaItem]]:
        if body.logprobs or body.tools:
            raise Unsupported(
                "logprobs and tools are not supported", param="logprobs" if body.logprobs else "tools"
            )
        loader = self.context.loader()
        media = await loader.load(body.media_parts())
        messages = [m.model_dump(mode="json", exclude_none=True) for m in body.messages]
        # Off the event loop, on the lifespan's decode pool: a renderer that runs the model's processor
        # takes milliseconds to tenths of a second for an item of a geometry it has not seen yet.
        render = partial(self.context.prompter.render_chat, messages, media, add_generation_prompt=True)
        return await asyncio.get_running_loop().run_in_executor(loader.executor, render), media

    def max_tokens(self, body: ChatCompletionRequest) -> int | None:
        return body.max_output_tokens

    def response(self, request_id: str, output: Output, usage: Usage) -> ChatCompletionResponse:
        choice = ChatCompletionChoice(
            index=0,
            message=AssistantResponseMessage(content=output.text),
            finish_reason=output.finish,
            token_ids=output.token_ids,
        )
        return ChatCompletionResponse(
            id=request_id,
            model=self.model_name,
            choices=[choice],
            usage=usage,
            prompt_token_ids=output.prompt_ids,
        )

    def opening_chunk(self, request_id: str, output: Output) -> str:
        """Announces the assistant's role in an event of its own, before any text (as OpenAI does)."""
        return self._chunk(request_id, ChatDelta(role="assistant", content=output.text), output)

    def chunk(self, request_id: str, output: Output) -> str:
        return self._chunk(request_id, ChatDelta(content=output.text), output)

    def usage_chunk(self, request_id: str, usage: Usage) -> str:
        return ChatCompletionChunk(id=request_id, model=self.model_name, choices=[], usage=usage).to_sse()

    def _chunk(self, request_id: str, delta: ChatDelta, output: Output) -> str:
        choice = ChatChunkChoice(
            index=0, delta=delta, finish_reason=output.finish, token_ids=output.token_ids
        )
        return ChatCompletionChunk(
            id=request_id, model=self.model_name, choices=[choice], prompt_token_ids=output.prompt_ids
        ).to_sse()

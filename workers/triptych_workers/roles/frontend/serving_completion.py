"""``POST /v1/completions``: one raw prompt (text or token ids) in, text out; no template, no media."""

from __future__ import annotations

from triptych_workers.engines.media import MediaItem, RenderedPrompt
from triptych_workers.protocol import CompletionChoice, CompletionRequest, CompletionResponse, Usage
from triptych_workers.roles.frontend.errors import Unsupported
from triptych_workers.roles.frontend.serving import OpenAIServing, Output


class OpenAIServingCompletion(OpenAIServing[CompletionRequest]):
    id_prefix = "cmpl-"

    async def render(self, body: CompletionRequest) -> tuple[RenderedPrompt, list[MediaItem]]:
        if body.logprobs or body.echo or body.suffix or (body.best_of or 1) > 1:
            raise Unsupported("logprobs, echo, suffix and best_of are not supported", param="prompt")
        prompt = body.prompt
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return self.context.prompter.render_text(prompt), []
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return RenderedPrompt(tuple(int(t) for t in prompt)), []  # type: ignore[arg-type]
        raise Unsupported("only one prompt per request is supported", param="prompt")

    def max_tokens(self, body: CompletionRequest) -> int | None:
        return body.max_tokens

    def response(self, request_id: str, output: Output, usage: Usage) -> CompletionResponse:
        return self._completion(request_id, output, usage)

    def chunk(self, request_id: str, output: Output) -> str:
        # OpenAI streams a completion as the same object as the whole response, without its usage.
        return self._completion(request_id, output, None).to_sse()

    def usage_chunk(self, request_id: str, usage: Usage) -> str:
        return CompletionResponse(id=request_id, model=self.model_name, choices=[], usage=usage).to_sse()

    def _completion(self, request_id: str, output: Output, usage: Usage | None) -> CompletionResponse:
        choice = CompletionChoice(
            index=0, text=output.text, finish_reason=output.finish, token_ids=output.token_ids
        )
        return CompletionResponse(
            id=request_id,
            model=self.model_name,
            choices=[choice],
            usage=usage,
            prompt_token_ids=output.prompt_ids,
        )

"""``ProcessorRenderer``: the ``Prompter`` for a model that a backend such as vLLM serves, rendering with
that model's own chat template, tokenizer and multimodal processor (``transformers.AutoProcessor`` of the
model directory or hub id), so the placeholder counts, image/video/audio tokens and tile grids in the
prompt are the model's.

How a prompt is rendered, the way vLLM renders a chat request:

1. Each message's content becomes a list of parts in the shape Hugging Face chat templates iterate
   (``{"type": "text", "text": ...}``, ``{"type": "image"}``, ``{"type": "video"}``, ``{"type": "audio"}``;
   a string becomes one text part), the template is applied, the text tokenized without special tokens.
2. Each placeholder token the template wrote (the processor's ``image_token``, ``video_token`` or
   ``audio_token``: transformers' convention for "the token in the text that stands for one item") takes
   the next media item, in order, and is replaced by the item's *expansion*: the processor's own
   replacement for one such token and that item, tokenized on its own (vLLM's processor splices its
   replacement into the token ids the same way). The span it fills is the item's ``PlaceholderSpan``, with
   the placeholder token it replaced, so a backend that expands placeholders itself is sent the prompt
   with each span folded back to that one token (``engines.vllm.protocol.collapse_placeholders``).

The expansion depends on the item's geometry alone (its shape; an audio clip's length and rate), never its
pixels or samples, as the processors compute it: so the processor is run on a blank item of that shape
(the frontend usually holds only an image's header, not its pixels: ``serving.decodeImagesOn``), and the
result is kept per geometry (an LRU), so a second image of the same size costs a dictionary lookup.

What is supported is a list of architectures (``ARCHITECTURES``), each checked against the processor
(counts, unit tier) and against vLLM's own expansion of the collapsed prompt (backends tier): a processor
that follows the convention may still disagree with vLLM (Gemma 3 merges the newlines around its image
sequence with the text's; Ultravox's placeholder is several tokens), and a wrong prompt is worse than a
refusal. Anything else is refused when the renderer is built, naming the architecture, as is a modality
the deployment serves that the model has no placeholder for, or a chat template that drops it.

This module imports transformers (and with it torch): the frontend of a backend that renders with it
loads it through the registry, in its own process; the reference backend's frontend stays torch-free.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import numpy as np
import transformers
from triptych_contract import Modality

from triptych_workers.engines.errors import (
    InvalidEngineInputError,
    ModelDirError,
)
from triptych_workers.engines.media import MediaItem, RenderedPrompt, expand_placeholders

# The architectures (config.json's ``architectures[0]``) this renderer is proven on, and what each takes.
ARCHITECTURES: Mapping[str, tuple[Modality, ...]] = {
    "Qwen2VLForConditionalGeneration": ("image", "video"),
    "Qwen2_5_VLForConditionalGeneration": ("image", "video"),
    "LlavaForConditionalGeneration": ("image",),
    "LlavaNextForConditionalGeneration": ("image",),
    "Idefics3ForConditionalGeneration": ("image",),
    "Qwen2AudioForConditionalGeneration": ("audio",),
}
EXPANSION_CACHE_ENTRIES = 1024
# transformers' classes are only partially typed: they are used through Any.
tf: Any = transformers

# The OpenAI content part types that carry each modality (protocol.content), as the template's part type.
_PART_MODALITY: Mapping[str, Modality] = {
    "image_url": "image",
    "video_url": "video",
    "audio_url": "audio",
    "input_audio": "audio",
}
_PROCESSOR_INPUT: Mapping[Modality, str] = {"image": "images", "video": "videos", "audio": "audio"}
_Geometry = tuple[Modality, tuple[int, ...], int | None]


class UnsupportedArchitectureError(ModelDirError):
    """The model is one the renderer cannot render prompts for (refused at startup, never a wrong prompt)."""


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages in the shape chat templates iterate (vLLM's "openai" content format): every
    content a list of parts, media parts reduced to their type (the template only places them)."""
    out = []
    for message in messages:
        content = message.get("content")
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            parts.append({"type": "text", "text": content})
        for part in content if isinstance(content, list) else ():
            part_type = part.get("type")
            if part_type == "text":
                parts.append({"type": "text", "text": part.get("text", "")})
            elif part_type in _PART_MODALITY:
                parts.append({"type": _PART_MODALITY[part_type]})
        out.append({**message, "content": parts})
    return out


class ProcessorRenderer:
    """Renders prompts for one model with its own processor (see the module docstring)."""

    def __init__(self, model: str, modalities: Sequence[Modality]) -> None:
        """``model``: a model directory (or a hub id where a hub is reachable). ``modalities``: what the
        deployment serves; each must be one the architecture takes."""
        try:
            config = tf.AutoConfig.from_pretrained(model)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelDirError(f"{model}: cannot load the model's config: {exc}") from exc
        self.architecture = str((getattr(config, "architectures", None) or ["(none)"])[0])
        takes = ARCHITECTURES.get(self.architecture)
        if takes is None:
            raise UnsupportedArchitectureError(
                f"{model}: architecture {self.architecture} is not one the frontend's renderer handles "
                f"(it handles {', '.join(sorted(ARCHITECTURES))})"
            )
        missing = [m for m in modalities if m not in takes]
        if missing:
            raise UnsupportedArchitectureError(
                f"{model}: {self.architecture} takes no {' or '.join(missing)} input (it takes "
                f"{', '.join(takes)}): leave {', '.join(missing)} out of the deployment's modalities"
            )
        try:
            self._processor: Any = tf.AutoProcessor.from_pretrained(model)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelDirError(f"{model}: cannot load the {self.architecture} processor: {exc}") from exc
        self._tokenizer: Any = self._processor.tokenizer
        self._template = self._processor.chat_template or self._tokenizer.chat_template
        if not self._template:
            raise ModelDirError(f"{model}: the model has no chat template")
        self._tokens: dict[Modality, str] = {}
        self._placeholders: dict[int, Modality] = {}
        for modality in modalities:
            token = getattr(self._processor, f"{modality}_token", None)
            ids = self._tokenizer.encode(token, add_special_tokens=False) if token else []
            if len(ids) != 1:
                raise UnsupportedArchitectureError(
                    f"{model}: {self.architecture}'s processor names no single-token {modality} "
                    f"placeholder (its {modality}_token is {token!r})"
                )
            self._tokens[modality] = str(token)
            self._placeholders[int(ids[0])] = modality
        self.max_model_len = int(getattr(config.get_text_config(), "max_position_embeddings", 0) or 0)
        self._expansions: OrderedDict[_Geometry, tuple[int, ...]] = OrderedDict()
        # One render at a time: the frontend renders on a pool of threads, and neither the cache nor a
        # transformers tokenizer (it resets its truncation state on every call) is safe to share between
        # threads at once.
        self._lock = threading.Lock()
        self._check_template(model)

    def _check_template(self, model: str) -> None:
        """The template must place every served modality's placeholder once per part (a template that
        treats content as a string would drop the media and every request with media would be refused)."""
        for modality, token in self._tokens.items():
            probe = [{"role": "user", "content": [{"type": modality}, {"type": "text", "text": "?"}]}]
            try:
                text = self._apply_template(probe, add_generation_prompt=True)
            except InvalidEngineInputError as exc:
                raise UnsupportedArchitectureError(
                    f"{model}: the chat template of {self.architecture} fails on a {modality} part: {exc}"
                ) from exc
            if text.count(token) != 1:
                raise UnsupportedArchitectureError(
                    f"{model}: the chat template of {self.architecture} does not place a {modality} part "
                    f"as one {token} (it wrote {text.count(token)})"
                )

    # -- Prompter ------------------------------------------------------------------------------------------
    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        media: Sequence[MediaItem],
        *,
        add_generation_prompt: bool = True,
    ) -> RenderedPrompt:
        conversation = template_messages(messages)
        with self._lock:
            text = self._apply_template(conversation, add_generation_prompt=add_generation_prompt)
            # Chat prompts get no special tokens of the tokenizer's own: the template wrote them (vLLM's
            # chat default, add_special_tokens=False).
            return self._expand(self._tokenizer.encode(text, add_special_tokens=False), media)

    def render_text(self, prompt: str, media: Sequence[MediaItem] = ()) -> RenderedPrompt:
        # A completion prompt gets the tokenizer's special tokens (a BOS where the model has one), as
        # vLLM's /v1/completions does by default.
        with self._lock:
            return self._expand(self._tokenizer.encode(prompt, add_special_tokens=True), media)

    # -- the parts ---------------------------------------------------------------------------------------
    def _apply_template(self, conversation: list[dict[str, Any]], *, add_generation_prompt: bool) -> str:
        try:
            text = self._tokenizer.apply_chat_template(
                conversation,
                chat_template=self._template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except jinja2.TemplateError as exc:  # the template's own raise_exception: a request it refuses
            raise InvalidEngineInputError(
                f"the model's chat template refused the messages: {exc}", param="messages"
            ) from exc
        return str(text)

    def _expand(self, ids: Sequence[int], media: Sequence[MediaItem]) -> RenderedPrompt:
        return expand_placeholders(
            ids, media, self._placeholders, self.expansion, max_model_len=self.max_model_len
        )

    def expansion(self, item: MediaItem) -> tuple[int, ...]:
        """The token ids one placeholder becomes for ``item``: the processor's, for its geometry (called
        under the render lock)."""
        geometry: _Geometry = (item.modality, tuple(int(d) for d in item.shape), item.sample_rate)
        cached = self._expansions.get(geometry)
        if cached is not None:
            self._expansions.move_to_end(geometry)
            return cached
        expansion = self._run_processor(item.modality, geometry[1], item.sample_rate)
        self._expansions[geometry] = expansion
        if len(self._expansions) > EXPANSION_CACHE_ENTRIES:
            self._expansions.popitem(last=False)
        return expansion

    def _run_processor(
        self, modality: Modality, shape: tuple[int, ...], sample_rate: int | None
    ) -> tuple[int, ...]:
        kwargs: dict[str, Any] = {}
        if modality == "audio":
            if len(shape) != 1 or shape[0] < 1:
                raise InvalidEngineInputError("audio must be a non-empty mono waveform", param="messages")
            wanted = getattr(self._processor.feature_extractor, "sampling_rate", None)
            if sample_rate != wanted:
                raise InvalidEngineInputError(
                    f"{self.architecture} takes audio at {wanted} Hz, got {sample_rate}", param="messages"
                )
            blank: Any = np.zeros(shape, dtype=np.float32)
            kwargs["sampling_rate"] = sample_rate
        else:
            frames = 4 if modality == "video" else 3
            if len(shape) != frames or shape[-1] != 3 or min(shape) < 1:
                what = "a TxHxWx3 video" if modality == "video" else "an HxWx3 image"
                raise InvalidEngineInputError(
                    f"{modality} must be {what}, got shape {shape}", param="messages"
                )
            blank = np.zeros(shape, dtype=np.uint8)
        kwargs[_PROCESSOR_INPUT[modality]] = [blank]
        try:
            processed = self._processor(text=[self._tokens[modality]], add_special_tokens=False, **kwargs)
        except ValueError as exc:  # e.g. an image smaller than the processor can patch
            raise InvalidEngineInputError(
                f"{self.architecture}'s processor refused a {modality} of shape {shape}: {exc}",
                param="messages",
            ) from exc
        return tuple(int(t) for t in processed["input_ids"][0])

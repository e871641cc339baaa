"""Prompt rendering and detokenization for the reference model, torch-free (the frontend uses it).

``ReferencePrompter`` applies the chat template saved with the model (Jinja in a sandbox, configured like
transformers' ``apply_chat_template``), tokenizes with the saved ``tokenizer.json`` and expands each media
placeholder to the number of tokens the item will embed to, computed from its geometry alone exactly as
Qwen2-VL's processors do (``smart_resize``, patch and merge sizes; audio: 25 tokens per second).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
from triptych_contract import Modality

from triptych_workers.engines.errors import InvalidEngineInputError
from triptych_workers.engines.media import MediaItem, RenderedPrompt, expand_placeholders
from triptych_workers.engines.reference.spec import read_manifest, spec_from_manifest
from triptych_workers.engines.text import IncrementalDetokenizer


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule: both sides multiples of ``factor``, area within [min_pixels, max_pixels]."""
    if min(height, width) < 1:
        raise InvalidEngineInputError(f"media of {height}x{width} pixels has no area", param="messages")
    if max(height, width) / min(height, width) > 200:
        raise InvalidEngineInputError("media aspect ratio must be below 200", param="messages")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class ReferencePrompter:
    """Chat template, tokenizer and placeholder arithmetic of one prepared model directory."""

    def __init__(self, model_dir: Path) -> None:
        manifest = read_manifest(model_dir)
        self.spec = spec_from_manifest(manifest)
        self.token_ids: dict[str, int] = dict(manifest["token_ids"])
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        self._template = env.from_string((model_dir / "chat_template.jinja").read_text())
        self.eos_token_ids = frozenset({self.token_ids["im_end"], self.token_ids["endoftext"]})
        self._pad_ids: dict[Modality, int] = {
            "image": self.token_ids["image_pad"],
            "video": self.token_ids["video_pad"],
            "audio": self.token_ids["audio_pad"],
        }
        self._modality_of_pad = {v: k for k, v in self._pad_ids.items()}

    # -- geometry --------------------------------------------------------------------------------------------
    def vision_grid(self, item: MediaItem) -> tuple[int, int, int]:
        """(temporal, height, width) in patches, as the processor will produce them."""
        spec = self.spec
        if item.modality == "image":
            if len(item.shape) != 3:
                raise InvalidEngineInputError("an image must be an HxWx3 array", param="messages")
            frames, height, width = 1, int(item.shape[0]), int(item.shape[1])
        elif item.modality == "video":
            if len(item.shape) != 4 or item.shape[0] < 1:
                raise InvalidEngineInputError(
                    "a video must be a TxHxWx3 array with at least one frame", param="messages"
                )
            frames, height, width = (int(d) for d in item.shape[:3])
        else:
            raise InvalidEngineInputError(f"{item.modality} has no vision grid", param="messages")
        rh, rw = smart_resize(
            height, width, spec.patch_size * spec.merge_size, spec.min_pixels, spec.max_pixels
        )
        grid_t = 1 if item.modality == "image" else math.ceil(frames / spec.temporal_patch_size)
        return grid_t, rh // spec.patch_size, rw // spec.patch_size

    def audio_frames(self, num_samples: int) -> int:
        """Mel frames after padding to a whole number of tokens (one frame per hop)."""
        spec = self.spec
        per_token = spec.audio_hop * spec.audio_frames_per_token
        return max(1, math.ceil(num_samples / per_token)) * spec.audio_frames_per_token

    def placeholder_count(self, item: MediaItem) -> int:
        """How many placeholder tokens ``item`` fills."""
        if item.modality == "audio":
            if len(item.shape) != 1:
                raise InvalidEngineInputError("audio must be a mono 1-D waveform", param="messages")
            if item.sample_rate != self.spec.audio_sample_rate:
                raise InvalidEngineInputError(
                    f"audio must be resampled to {self.spec.audio_sample_rate} Hz, got {item.sample_rate}",
                    param="messages",
                )
            return self.audio_frames(int(item.shape[0])) // self.spec.audio_frames_per_token
        grid_t, grid_h, grid_w = self.vision_grid(item)
        return grid_t * grid_h * grid_w // self.spec.merge_size**2

    # -- rendering -------------------------------------------------------------------------------------------
    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
    ) -> str:
        return self._template.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            add_vision_id=False,
        )

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        media: Sequence[MediaItem],
        *,
        add_generation_prompt: bool = True,
    ) -> RenderedPrompt:
        return self.render_text(
            self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt), media
        )

    def render_text(self, prompt: str, media: Sequence[MediaItem] = ()) -> RenderedPrompt:
        """Tokenizes ``prompt`` and expands its placeholders; they must match ``media`` one to one."""
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        return expand_placeholders(
            ids,
            media,
            self._modality_of_pad,
            lambda item: [self._pad_ids[item.modality]] * self.placeholder_count(item),
            max_model_len=self.spec.max_position_embeddings,
        )

    # -- detokenizing ----------------------------------------------------------------------------------------
    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def new_detokenizer(self, stop: Sequence[str] = ()) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.detokenize, stop)

"""What the reference model is: every number that shapes its config, tokenizer, processor and audio encoder.

The spec's hash names the model directory, so a changed spec never reuses an old directory. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from triptych_workers.engines.errors import ModelDirError

# TODO(contract): move to triptych_contract with the other env var names once that module has its list.
MODEL_CACHE_ENV = "TRIPTYCH_MODEL_CACHE"
MANIFEST = "triptych-reference.json"
AUDIO_WEIGHTS = "audio_encoder.safetensors"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Bump when the on-disk layout written by ``model_dir`` changes in a way the spec does not capture.
FORMAT_VERSION = 2  # 2: model.safetensors.index.json

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
AUDIO_START = "<|audio_start|>"
AUDIO_PAD = "<|audio_pad|>"
AUDIO_END = "<|audio_end|>"
SPECIAL_TOKENS = (
    ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD,
    AUDIO_START, AUDIO_PAD, AUDIO_END,
)  # fmt: skip

# Qwen2-VL's chat template, extended with an audio part (the tiny model has a deterministic audio encoder
# whose embeddings fill <|audio_pad|> placeholders) and OpenAI-style part names (image_url, input_audio, ...).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content or 'video_url' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] in ['audio', 'input_audio', 'audio_url'] or 'audio' in content %}"
    "<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The text the byte-level BPE is trained on: small, fixed, English-ish, so merges are stable and words common
# in prompts become single tokens.
TOKENIZER_CORPUS = (
    "You are a helpful assistant. Describe the image. What is in this picture? What happens in this video? "
    "Transcribe the audio clip. The quick brown fox jumps over the lazy dog. "
    "A cat sits on a red mat near the window while the sun sets over the hills. "
    "Two people walk along the beach; waves roll in and out. "
    "Hello, world! How are you today? I am fine, thank you. Please answer in one short sentence. "
    "Kubernetes runs the encode, prefill and decode panels; each scales on its own queue depth. "
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Colors: red, green, blue, yellow, black, white, orange. "
    "Animals: cat, dog, bird, fish, horse, cow, sheep. The model answers with tokens streamed back. "
)


@dataclass(frozen=True, slots=True)
class ReferenceSpec:
    """Sizes of the tiny model. Defaults keep the whole E/P/D path fast on two CPU cores."""

    seed: int = 20261123
    init_std: float = 0.08
    vocab_size: int = 512  # the BPE is trained to this size; the model's embedding table matches it
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 2  # head_dim = hidden_size / num_heads = 64
    num_kv_heads: int = 1
    mrope_section: tuple[int, int, int] = (8, 12, 12)  # sums to head_dim / 2
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 4096
    vision_depth: int = 2
    vision_embed_dim: int = 64
    vision_heads: int = 2
    vision_mlp_ratio: int = 2
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    audio_sample_rate: int = 16_000
    audio_n_fft: int = 400  # 25 ms windows
    audio_hop: int = 160  # 10 ms hop
    audio_n_mels: int = 32
    audio_frames_per_token: int = 4  # 25 audio tokens per second
    special_tokens: tuple[str, ...] = field(default=SPECIAL_TOKENS)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def digest(self) -> str:
        """A short stable hash of everything that shapes the files (spec, template, corpus, format)."""
        payload = json.dumps(
            {
                "spec": asdict(self),
                "template": CHAT_TEMPLATE,
                "corpus": TOKENIZER_CORPUS,
                "format": FORMAT_VERSION,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def default_model_dir(spec: ReferenceSpec, environ: Mapping[str, str] | None = None) -> Path:
    """``$TRIPTYCH_MODEL_CACHE/reference-<digest>``, else ``~/.cache/triptych/models/reference-<digest>``."""
    env = os.environ if environ is None else environ
    root = Path(env[MODEL_CACHE_ENV]) if env.get(MODEL_CACHE_ENV) else Path.home() / ".cache/triptych/models"
    return root / f"reference-{spec.digest()}"


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a complete model directory; ``ModelDirError`` if there is none or it is unreadable."""
    try:
        manifest: dict[str, Any] = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path} is not a prepared reference model directory: {exc}") from exc
    return manifest


def spec_from_manifest(manifest: Mapping[str, Any]) -> ReferenceSpec:
    fields = dict(manifest["spec"])
    fields["mrope_section"] = tuple(fields["mrope_section"])
    fields["special_tokens"] = tuple(fields["special_tokens"])
    return ReferenceSpec(**fields)

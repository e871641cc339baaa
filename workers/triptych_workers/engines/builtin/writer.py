"""Writes a builtin model directory (every name in ``catalog.BUILTINS`` but the reference's) offline.

Each is what ``from_pretrained`` of a real checkpoint of that architecture reads, at toy sizes: the model's
own config class (language model of 2 layers, hidden 128, head_dim 64; a 2-layer vision or audio tower),
fixed-seed random weights, a byte-level BPE tokenizer trained here on a small corpus with the
architecture's special tokens, the architecture's own processor class (image/video processor or audio
feature extractor with small pixel budgets) and a chat template shaped like the published model's. No file
comes from a hub: the tokenizers a real processor would bring from one are built here from the special
tokens its processor looks up (Idefics3's ``<row_i_col_j>`` grid tokens, Qwen2-Audio's ``<|AUDIO|>``).

Weights are initialised parameter by parameter from (seed, parameter name), not by the model's own init,
so every pod that writes its own copy writes the same numbers (an encode pod's tower and a prefill pod's
language model must be one model). Files go into a temporary sibling directory renamed into place, so a
reader never sees half a model; a directory already written for the same digest is reused untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from triptych_workers.engines.builtin.catalog import BUILTINS, REFERENCE
from triptych_workers.engines.errors import ModelDirError
from triptych_workers.engines.model_files import write_once
from triptych_workers.engines.reference.spec import MODEL_CACHE_ENV, TOKENIZER_CORPUS

# transformers' classes are only partially typed: they are used through Any.
tf: Any = transformers

MANIFEST = "triptych-builtin.json"
FORMAT_VERSION = 2  # 2: weights under their published names
SEED = 20261124
INIT_STD = 0.08
VOCAB_SIZE = 512
MAX_POSITIONS = 4096
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# The language model every architecture gets (head_dim 64: a size every attention backend of vLLM's CPU
# build takes).
LM = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": MAX_POSITIONS,
    "initializer_range": INIT_STD,
}
VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}

# -- chat templates, shaped like each published model's (they iterate content parts: the OpenAI shape) -----
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{% if message['role'] == 'user' %}{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)
QWEN_VL_TEMPLATE = (
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
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
QWEN2_AUDIO_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAMA_SPECIALS = ("<unk>", "<s>", "</s>")
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
IDEFICS3_GRID = tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))


def train_tokenizer(
    specials: Sequence[str], *, eos: str, pad: str, bos: str | None = None, unk: str | None = None
) -> Any:
    """A byte-level BPE of ``VOCAB_SIZE`` tokens, ``specials`` first (ids 0..), as a fast tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TOKENIZER_CORPUS] * 4, trainer)
    if tokenizer.get_vocab_size() > VOCAB_SIZE:
        raise ModelDirError(f"tokenizer grew to {tokenizer.get_vocab_size()} > {VOCAB_SIZE} tokens")
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=eos,
        pad_token=pad,
        bos_token=bos,
        unk_token=unk,
        model_max_length=MAX_POSITIONS,
    )


def seeded_init(model: Any, seed: int) -> None:
    """Every parameter from (seed, its name): norms' weights 1, other vectors 0, matrices N(0, INIT_STD)."""
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.ndim == 1 and "norm" in name and name.endswith(".weight"):
                param.fill_(1.0)
            elif param.ndim == 1 and not name.endswith("image_newline"):
                param.zero_()
            else:
                generator = torch.Generator().manual_seed(seed ^ zlib.crc32(name.encode()))
                param.copy_(torch.randn(param.shape, generator=generator) * INIT_STD)


def _ids(tokenizer: Any, *tokens: str) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    if None in ids or tokenizer.unk_token_id in ids:
        raise ModelDirError(f"special tokens {tokens} missing from the trained tokenizer")
    return [int(i) for i in ids]


def _lm(tokenizer: Any, eos: Sequence[str], bos: str) -> dict[str, Any]:
    return {
        **LM,
        "bos_token_id": _ids(tokenizer, bos)[0],
        "eos_token_id": _ids(tokenizer, *eos),
        "pad_token_id": tokenizer.pad_token_id,
    }


Written = tuple[Any, Any]  # (the model's config, its processor), what write_builtin saves


def _llava(next_: bool) -> Written:
    tokenizer = train_tokenizer(
        (*LLAMA_SPECIALS, "<image>", "<pad>", "[INST]", "[/INST]"),
        eos="</s>", pad="<pad>", bos="<s>", unk="<unk>",
    )  # fmt: skip
    image = _ids(tokenizer, "<image>")[0]
    vision = {**VISION, "image_size": 56, "patch_size": 14, "projection_dim": 64}
    common: dict[str, Any] = {
        "vision_config": {"model_type": "clip_vision_model", **vision},
        "text_config": {"model_type": "llama", **_lm(tokenizer, ["</s>"], "<s>")},
        "image_token_index": image,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
    }
    processor_images: dict[str, Any] = {
        "size": {"shortest_edge": 56},
        "crop_size": {"height": 56, "width": 56},
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
    }
    processor_kwargs = {
        "patch_size": 14,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,  # CLIP's class token
        "image_token": "<image>",
    }
    if not next_:
        config = tf.LlavaConfig(**common, image_seq_length=16)
        processor = tf.LlavaProcessor(
            image_processor=tf.CLIPImageProcessor(**processor_images),
            tokenizer=tokenizer,
            chat_template=LLAVA_TEMPLATE,
            **processor_kwargs,
        )
        return config, processor
    pinpoints = [[56, 112], [112, 56], [112, 112], [56, 168], [168, 56]]
    config = tf.LlavaNextConfig(**common, image_grid_pinpoints=pinpoints, image_seq_length=16)
    processor = tf.LlavaNextProcessor(
        image_processor=tf.LlavaNextImageProcessor(**processor_images, image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer,
        chat_template=LLAVA_NEXT_TEMPLATE,
        **processor_kwargs,
    )
    return config, processor


def _qwen2_5_vl() -> Written:
    tokenizer = train_tokenizer(
        (*QWEN_SPECIALS, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
        eos="<|im_end|>", pad="<|endoftext|>",
    )  # fmt: skip
    ids = dict(zip(("image", "video", "start", "end"), _ids(
        tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
    ), strict=True))  # fmt: skip
    config = tf.Qwen2_5_VLConfig(
        text_config={
            **_lm(tokenizer, ["<|im_end|>", "<|endoftext|>"], "<|endoftext|>"),
            # head_dim 64 splits into (temporal, height, width) rotary sections of 8 + 12 + 12 pairs.
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
        },
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "out_hidden_size": LM["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "initializer_range": INIT_STD,
        },
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["start"],
        vision_end_token_id=ids["end"],
        tie_word_embeddings=False,
    )
    pixels: dict[str, Any] = {
        "size": {"shortest_edge": 56 * 56, "longest_edge": 224 * 224},
        "patch_size": 14,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
    }
    processor = tf.Qwen2_5_VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(**pixels),
        # Frames arrive already sampled by Triptych's media layer (and by vLLM's loader): no resampling.
        video_processor=tf.Qwen2VLVideoProcessor(
            **{**pixels, "size": {"shortest_edge": 56 * 56, "longest_edge": 4 * 112 * 112}},
            do_sample_frames=False,
        ),
        tokenizer=tokenizer,
        chat_template=QWEN_VL_TEMPLATE,
    )
    return config, processor


def _idefics3() -> Written:
    specials = (
        "<|begin_of_text|>", "<|end_of_text|>", "<end_of_utterance>", "<fake_token_around_image>",
        "<image>", "<global-img>", *IDEFICS3_GRID,
    )  # fmt: skip
    tokenizer = train_tokenizer(
        specials, eos="<end_of_utterance>", pad="<|end_of_text|>", bos="<|begin_of_text|>"
    )
    config = tf.Idefics3Config(
        vision_config={**VISION, "image_size": 56, "patch_size": 14, "initializer_range": INIT_STD},
        text_config={"model_type": "llama", **_lm(tokenizer, ["<end_of_utterance>"], "<|begin_of_text|>")},
        image_token_id=_ids(tokenizer, "<image>")[0],
        scale_factor=2,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    processor = tf.Idefics3Processor(
        # Tiles of 56 px (the tower's input), the image first resized to at most 4 x 56 on its long edge.
        image_processor=tf.Idefics3ImageProcessor(
            size={"longest_edge": 4 * 56},
            max_image_size={"longest_edge": 56},
            do_image_splitting=True,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        ),
        tokenizer=tokenizer,
        image_seq_len=(56 // 14) ** 2 // 2**2,
        chat_template=IDEFICS3_TEMPLATE,
    )
    return config, processor


def _qwen2_audio() -> Written:
    tokenizer = train_tokenizer(
        (*QWEN_SPECIALS, "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"), eos="<|im_end|>", pad="<|endoftext|>"
    )
    config = tf.Qwen2AudioConfig(
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 128,
            "d_model": 64,
            "max_source_positions": 1500,
            "initializer_range": INIT_STD,
        },
        text_config={
            "model_type": "qwen2",
            **_lm(tokenizer, ["<|im_end|>", "<|endoftext|>"], "<|endoftext|>"),
        },
        audio_token_index=_ids(tokenizer, "<|AUDIO|>")[0],
        tie_word_embeddings=False,
    )
    processor = tf.Qwen2AudioProcessor(
        feature_extractor=tf.WhisperFeatureExtractor(feature_size=128, sampling_rate=16_000),
        tokenizer=tokenizer,
        chat_template=QWEN2_AUDIO_TEMPLATE,
    )
    return config, processor


_WRITERS: Mapping[str, Callable[[], Written]] = {
    "tiny-llava": lambda: _llava(next_=False),
    "tiny-llava-next": lambda: _llava(next_=True),
    "tiny-qwen2.5-vl": _qwen2_5_vl,
    "tiny-idefics3": _idefics3,
    "tiny-qwen2-audio": _qwen2_audio,
}


# transformers 5 saves some architectures under its own module names, not the ones their published
# checkpoints use, which is what vLLM loads (vLLM 0.32 refused tiny-llava's "vision_tower.embeddings.*":
# it knows "vision_tower.vision_model.embeddings.*", as in llava-hf's checkpoints). These prefixes are put
# back; transformers loads either form.
_PUBLISHED_NAMES: Mapping[str, tuple[tuple[str, str], ...]] = {
    "tiny-llava": (("vision_tower.", "vision_tower.vision_model."),),
    "tiny-llava-next": (("vision_tower.", "vision_tower.vision_model."),),
    "tiny-qwen2-audio": (("language_model.model.model.", "language_model.model."),),
}


def _publish_names(weights: Path, renames: Sequence[tuple[str, str]]) -> None:
    if not renames:
        return

    def published(key: str) -> str:
        for old, new in renames:
            # (an old prefix that the new one extends is not renamed twice)
            if key.startswith(old) and not (len(new) > len(old) and key.startswith(new)):
                return new + key[len(old) :]
        return key

    tensors = load_file(str(weights))
    save_file({published(k): v for k, v in tensors.items()}, str(weights), metadata={"format": "pt"})


def digest(name: str) -> str:
    """What names one builtin's files: its name, the writer's format and the transformers version that
    serialises the configs (another version may write other keys)."""
    payload = json.dumps([name, FORMAT_VERSION, SEED, transformers.__version__])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_dir(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """``$TRIPTYCH_MODEL_CACHE/<name>-<digest>``, else ``~/.cache/triptych/models/<name>-<digest>`` (where
    tests and benchmarks keep theirs between runs, beside the reference model's)."""
    env = os.environ if environ is None else environ
    root = Path(env[MODEL_CACHE_ENV]) if env.get(MODEL_CACHE_ENV) else Path.home() / ".cache/triptych/models"
    return root / f"{name}-{digest(name)}"


def write_builtin(name: str, target: Path | None = None) -> Path:
    """Ensures ``target`` holds builtin model ``name``; returns it. A directory already complete for the
    same digest is left as it is; anything else at ``target`` is refused (pick another path rather than
    overwrite someone's model). ``target`` defaults to ``default_dir(name)``."""
    if name == REFERENCE or name not in _WRITERS:
        known = ", ".join(sorted(_WRITERS))
        raise ModelDirError(
            f"no builtin model {name!r} here (these are: {known}; {REFERENCE} is the reference's)"
        )
    target = default_dir(name) if target is None else target
    return write_once(target, lambda out: _write(name, out), lambda t: _check_existing(t, name))


def _check_existing(target: Path, name: str) -> None:
    try:
        manifest = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{target} exists and is not a builtin model directory: {exc}") from exc
    if manifest.get("name") != name or manifest.get("digest") != digest(name):
        raise ModelDirError(
            f"{target} holds {manifest.get('name')} {manifest.get('digest')}, not {name} {digest(name)}"
        )


def _write(name: str, out: Path) -> None:
    config, processor = _WRITERS[name]()
    config.architectures = [BUILTINS[name].architecture]
    model_class = getattr(tf, BUILTINS[name].architecture)
    torch.manual_seed(SEED)  # what seeded_init leaves untouched (buffers) is the model's own, seeded too
    model = model_class(config).to(torch.float32).eval()
    seeded_init(model, SEED ^ zlib.crc32(name.encode()))
    text = config.get_text_config()
    model.generation_config = tf.GenerationConfig(
        bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id
    )
    model.save_pretrained(str(out))
    _publish_names(out / "model.safetensors", _PUBLISHED_NAMES.get(name, ()))
    processor.save_pretrained(str(out))
    (out / MANIFEST).write_text(json.dumps({"name": name, "digest": digest(name)}, indent=2, sort_keys=True))
    # safetensors writes 0600; the workers reading a volume an init container filled may run as another user.
    for written in out.iterdir():
        written.chmod(0o644)
    out.chmod(0o755)

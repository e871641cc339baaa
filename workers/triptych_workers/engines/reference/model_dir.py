"""Writes the reference model directory once, like a real checkpoint, and checks it before use.

``prepare_model`` builds everything offline from a ``ReferenceSpec``: a byte-level BPE tokenizer trained on a
small built-in corpus with Qwen2-VL's special tokens and chat template, a ``Qwen2VLForConditionalGeneration``
with fixed-seed random weights, Qwen2-VL image/video processor settings with small pixel budgets, and the
weights of the deterministic audio encoder. Files are written into a temporary sibling directory and renamed
into place, so readers never see half a model and two racing writers leave one complete copy. A directory that
already holds the manifest for the same spec digest is reused untouched.

Layout (``from_pretrained(path)`` and ``AutoTokenizer``/``AutoProcessor.from_pretrained(path)`` load it
offline;
``AutoProcessor`` needs torchvision installed because transformers' Qwen2-VL video processor uses it)::

    config.json, generation_config.json, model.safetensors      the language model + vision tower
    model.safetensors.index.json                                 which file holds them (not the audio's)
    tokenizer.json, tokenizer_config.json, chat_template.jinja  tokenizer and template
    processor_config.json                                        image and video processor settings
    audio_encoder.safetensors                                    mel filters + projection (fixed seed)
    triptych-reference.json                                      manifest, written last: spec, digest, ids,
    sha256
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from triptych_workers.engines.errors import ModelDirError
from triptych_workers.engines.model_files import write_once
from triptych_workers.engines.reference.spec import (
    AUDIO_PAD,
    AUDIO_START,
    AUDIO_WEIGHTS,
    CHAT_TEMPLATE,
    CLIP_MEAN,
    CLIP_STD,
    ENDOFTEXT,
    FORMAT_VERSION,
    IM_END,
    IM_START,
    IMAGE_PAD,
    MANIFEST,
    TOKENIZER_CORPUS,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    ReferenceSpec,
    default_model_dir,
    read_manifest,
)


def prepare_model(path: Path | None = None, spec: ReferenceSpec | None = None) -> Path:
    """Ensures a complete model directory for ``spec`` at ``path`` (default: ``default_model_dir``); returns
    it.

    A directory that is already complete for the same spec is left as it is (not even its mtime changes).
    One written for another spec is refused: pick another path rather than overwrite someone's model.
    """
    spec = spec or ReferenceSpec()
    target = path if path is not None else default_model_dir(spec)
    return write_once(target, lambda out: _write_model(out, spec), lambda t: _check_existing(t, spec))


def _check_existing(target: Path, spec: ReferenceSpec) -> None:
    manifest = read_manifest(target)
    if manifest.get("digest") != spec.digest():
        raise ModelDirError(
            f"{target} holds reference model {manifest.get('digest')!r}, not {spec.digest()!r}; "
            "use another path"
        )


def _write_model(out: Path, spec: ReferenceSpec) -> None:
    token_ids = _write_tokenizer(out, spec)
    _write_processor_config(out, spec)
    _write_language_model(out, spec, token_ids)
    _write_audio_encoder(out, spec)
    manifest = {
        "format": FORMAT_VERSION,
        "digest": spec.digest(),
        "spec": spec.to_json(),
        "token_ids": token_ids,
        "sha256": {
            name: _sha256(out / name) for name in ("model.safetensors", AUDIO_WEIGHTS, "tokenizer.json")
        },
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    # safetensors writes 0600; the workers reading a volume an init container filled may run as another user.
    for written in out.iterdir():
        written.chmod(0o644)
    out.chmod(0o755)


def _write_tokenizer(out: Path, spec: ReferenceSpec) -> dict[str, int]:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TOKENIZER_CORPUS] * 4, trainer)
    if tokenizer.get_vocab_size() > spec.vocab_size:
        raise ModelDirError(f"tokenizer grew to {tokenizer.get_vocab_size()} > vocab_size {spec.vocab_size}")
    fast = cast(Any, PreTrainedTokenizerFast)(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    ids: dict[str, int] = {}
    for name, token in (
        ("endoftext", ENDOFTEXT), ("im_start", IM_START), ("im_end", IM_END), ("vision_start", VISION_START),
        ("vision_end", VISION_END), ("image_pad", IMAGE_PAD), ("video_pad", VIDEO_PAD),
        ("audio_start", AUDIO_START), ("audio_pad", AUDIO_PAD),
    ):  # fmt: skip
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise ModelDirError(f"special token {token} missing from the trained tokenizer")
        ids[name] = token_id
    return ids


def _write_processor_config(out: Path, spec: ReferenceSpec) -> None:
    common: dict[str, Any] = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "merge_size": spec.merge_size,
        "patch_size": spec.patch_size,
        "resample": 3,  # bicubic
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": spec.max_pixels, "shortest_edge": spec.min_pixels},
        "temporal_patch_size": spec.temporal_patch_size,
    }
    config = {
        "processor_class": "Qwen2VLProcessor",
        "image_processor": {**common, "image_processor_type": "Qwen2VLImageProcessor"},
        # Frames arrive already sampled by the media layer, so the processor never samples again.
        "video_processor": {
            **common,
            "do_sample_frames": False,
            "video_processor_type": "Qwen2VLVideoProcessor",
        },
    }
    (out / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def _write_language_model(out: Path, spec: ReferenceSpec, ids: Mapping[str, int]) -> None:
    eos = [ids["im_end"], ids["endoftext"]]
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": spec.vocab_size,
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads,
            "num_key_value_heads": spec.num_kv_heads,
            "max_position_embeddings": spec.max_position_embeddings,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": spec.rope_theta,
                "mrope_section": list(spec.mrope_section),
            },
            "bos_token_id": ids["endoftext"],
            "eos_token_id": eos,
            "pad_token_id": ids["endoftext"],
            "initializer_range": spec.init_std,
        },
        vision_config={
            "depth": spec.vision_depth,
            "embed_dim": spec.vision_embed_dim,
            "hidden_size": spec.hidden_size,
            "num_heads": spec.vision_heads,
            "mlp_ratio": spec.vision_mlp_ratio,
            "patch_size": spec.patch_size,
            "temporal_patch_size": spec.temporal_patch_size,
            "spatial_merge_size": spec.merge_size,
            "initializer_range": spec.init_std,
        },
        image_token_id=ids["image_pad"],
        video_token_id=ids["video_pad"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=False,
    )
    model = cast(Any, Qwen2VLForConditionalGeneration)(config).to(torch.float32).eval()
    # Our own seeded init, parameter by parameter: independent of transformers' init order and defaults.
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.ndim == 1 and ("norm" in name or ".ln_q." in name) and name.endswith(".weight"):
                param.fill_(1.0)
            elif param.ndim == 1:
                param.zero_()
            else:
                generator = torch.Generator().manual_seed(spec.seed ^ zlib.crc32(name.encode()))
                param.copy_(torch.randn(param.shape, generator=generator) * spec.init_std)
    model.generation_config = cast(Any, GenerationConfig)(
        bos_token_id=ids["endoftext"], eos_token_id=eos, pad_token_id=ids["endoftext"], do_sample=False
    )
    model.save_pretrained(str(out))
    _write_weight_index(out)


def _write_weight_index(out: Path) -> None:
    """``model.safetensors.index.json``: which file holds the language model's weights. A loader that reads
    every ``*.safetensors`` of the directory (vLLM does, without an index) would take the audio encoder's
    file for the model's and refuse its unknown tensors."""
    with safe_open(str(out / "model.safetensors"), framework="numpy") as weights:
        names = sorted(weights.keys())
    size = (out / "model.safetensors").stat().st_size
    index = {"metadata": {"total_size": size}, "weight_map": dict.fromkeys(names, "model.safetensors")}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))


def audio_encoder_weights(spec: ReferenceSpec) -> dict[str, npt.NDArray[np.float32]]:
    """Mel filterbank ``[n_mels, n_fft/2+1]`` and the fixed-seed projection ``[n_mels*frames, hidden]``."""
    rng = np.random.default_rng(spec.seed + 1)
    fan_in = spec.audio_n_mels * spec.audio_frames_per_token
    projection = rng.standard_normal((fan_in, spec.hidden_size)).astype(np.float32) / np.float32(
        np.sqrt(fan_in)
    )
    return {"mel_filters": _mel_filters(spec), "projection": projection}


def _write_audio_encoder(out: Path, spec: ReferenceSpec) -> None:
    save_file(audio_encoder_weights(spec), str(out / AUDIO_WEIGHTS))


def _mel_filters(spec: ReferenceSpec) -> npt.NDArray[np.float32]:
    """Triangular HTK-style mel filters between 0 Hz and Nyquist."""
    n_bins = spec.audio_n_fft // 2 + 1
    nyquist = spec.audio_sample_rate / 2

    def hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    mel_points = np.linspace(0.0, float(hz_to_mel(np.array(nyquist))), spec.audio_n_mels + 2)
    hz_points = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    bin_freqs = np.linspace(0.0, nyquist, n_bins)
    filters = np.zeros((spec.audio_n_mels, n_bins), dtype=np.float64)
    for m in range(spec.audio_n_mels):
        left, centre, right = hz_points[m], hz_points[m + 1], hz_points[m + 2]
        rising = (bin_freqs - left) / max(centre - left, 1e-9)
        falling = (right - bin_freqs) / max(right - centre, 1e-9)
        filters[m] = np.clip(np.minimum(rising, falling), 0.0, None)
    return filters.astype(np.float32)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

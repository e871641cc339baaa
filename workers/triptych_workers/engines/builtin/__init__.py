"""The builtin models: tiny random-weight checkpoints of real architectures, written offline from their
configs by ``transformers`` (no hub, no download), one per name that ``model.source.builtin`` accepts.

``catalog`` names them (torch-free: what each is, its architecture and modalities); ``writer`` writes one
(torch and transformers); ``prepare`` is the command an init container runs. ``tiny-qwen2-vl`` is the
reference backend's model and is written by ``engines.reference.model_dir``; the others exist so that the
frontend's renderer and a backend like vLLM are proven on more than one model family. Their answers are
noise; what they carry is each architecture's real config, tokenizer layout, processor and chat template.
"""

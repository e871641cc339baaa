"""Engines: the model runtimes behind the encode, prefill and decode roles.

``base`` is the interface every backend implements (and the units that travel between roles);
``text`` holds the torch-free incremental detokenizer with stop strings; ``registry`` says, per backend
name, how its engine and its prompter load; ``reference`` is the CPU reference backend (a tiny
Qwen2-VL-shaped model). Nothing here imports torch at package import time: only ``reference.engine`` and
``reference.model_dir`` do, and only when they are imported.
"""

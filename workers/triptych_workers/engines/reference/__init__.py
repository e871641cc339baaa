"""The CPU reference backend: a tiny Qwen2-VL-shaped model with fixed-seed random weights.

``spec`` describes the model (torch-free), ``model_dir`` writes it once to disk like a real checkpoint
(``prepare`` is its CLI, run by the init container), ``prompt`` renders and detokenizes (torch-free, so the
frontend can use it), and ``engine`` runs the vision tower, prefill and decode with torch.
"""

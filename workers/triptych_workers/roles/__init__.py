"""The roles: frontend, encode, prefill, decode and the aggregated forms (pd, epd).

Roles never import each other; what they share is in ``common`` (stage logic, data-plane helpers),
``server`` (process plumbing), ``pipeline`` (how the frontend reaches the engines), ``routing`` and
``messages``.
"""

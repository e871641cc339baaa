"""SGLang, as far as a worker needs it without importing SGLang: the gauges of its ``/metrics`` that give
the contract's load figures (``metrics.SGLANG_LOAD``). SGLang needs an accelerator to serve, so no SGLang
engine runs here; its command lines are judged by SGLang's own parser (``tests/integration/backends``) and
these names by its own metrics collector."""

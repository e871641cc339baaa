"""The encoder cache: coalescing, byte-bounded LRU of encoder outputs keyed by media hash."""

from triptych_workers.cache.encoder_cache import EncoderCache, EncoderCacheStats, default_size_of

__all__ = ["EncoderCache", "EncoderCacheStats", "default_size_of"]

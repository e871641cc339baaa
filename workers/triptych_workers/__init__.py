"""The Triptych worker runtime: protocol, media, hashing, cache, transport, engines and roles."""

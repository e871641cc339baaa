"""Media: fetching bytes safely (connector) separate from decoding them (image, video, audio)."""

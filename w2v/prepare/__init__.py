"""prepare-corpus as a library: list sources, decode them in chunks, pack length-bucketed shards."""

"""The on-disk shard format: schema, manifest, atomic writer, memory-mapped reader, verification."""

"""`w2v doctor`: the design document's troubleshooting guide, applied to this machine, a shard folder or a run."""

"""Dynamic batching: the batcher (batcher.py, execution.py), its delay policy (delay.py), Triton-style
statistics (stats.py), the byte bound of queued requests (queue_bytes.py) and what it reports (observer.py)."""

"""Model versions: the repository on disk (disk.py), the hub that loads and serves them (hub.py), one loaded
version (version.py), its tensor batches (tensor_batch.py), input checks (validation.py), instances (instances.py)."""

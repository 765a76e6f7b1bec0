"""Web-free code shared by training, export and the service: the artifact contract and each family's domain code.

- `families.manifest`: the manifest model (export writes it, the service reads it);
- `families.registry`: the one registry of model families and the four parts of each family's contract;
- `families.repository_layout`: the model repository on disk (which versions there are, the latest, the next
  number, the staged and atomic publish of a new one), for the service, export and deploy/;
- `families.storage`: crash-safe file writes;
- `families.<family>/`: what training and serving must agree on (preprocessing, classes, the codec procedure,
  bitstream and tables, ...), and `contract.py`: the family's typed manifest `preprocessing` section and the
  names of its assets.

Nothing here imports fastapi, starlette, uvicorn, pydantic-settings or prometheus_client
(tests/platform/test_packages.py imports it with them blocked).
"""

"""Water reconstruction, the web-free part: modalities, normalisation, masks, the gap prior and the artifact
contract (contract.py), shared by training, export and the service."""

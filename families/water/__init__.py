"""Water reconstruction, the shared part: modalities, normalisation, masks and the gap prior."""

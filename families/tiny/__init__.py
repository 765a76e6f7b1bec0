"""The tiny test model, the shared part: its (empty) manifest contract."""

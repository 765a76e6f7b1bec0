"""HPCM learned image codec with RWKV context cells (see ../shared/specs/imagecodec.md)."""

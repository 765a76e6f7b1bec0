"""Image compression family: HPCM codec with RWKV context cells.

Model naming: one model per quality level, `imagecodec-q1` .. `imagecodec-q6` (higher = more bits);
`make serve` ships the default model `imagecodec` (one quality level). Routes: POST /image/compress,
POST /image/decompress (see routes.py).
"""

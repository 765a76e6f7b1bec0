"""The HPCM coding schedule: which (channel, position) of the latent is coded at which of the 11 steps.

Shared by training (masks for the progressive forward pass) and the codec procedure (which symbols each
step codes), so both see exactly the same order. Pure numpy.

Scales are nested sub-lattices of the latent grid: s1 = positions (i, j) with i, j = 0 mod 4 (a grid of
H/4 x W/4), s2 = positions = 0 mod 2 (H/2 x W/2), s3 = all positions. Steps:
  s1: 2 steps, checkerboard on the s1 grid; the two channel halves use complementary phases.
  s2: 3 steps, the three new positions of each 2x2 cell of the s2 grid; each channel quarter visits them
      in its own order (a permutation per quarter).
  s3: 6 steps, the three new positions of each 2x2 cell of the full grid, split by the checkerboard
      parity of the cell; again permuted per channel quarter.
The pattern repeats every 8 latent positions and is cropped to the latent size, which must be a multiple
of 4 (the s1 grid), i.e. images padded to a multiple of 64.
"""

from __future__ import annotations

import numpy as np

NUM_STEPS = 11
# Step index (0-based) -> scale factor of the grid that step works on (4 = s1, 2 = s2, 1 = s3).
STEP_FACTOR: tuple[int, ...] = (4, 4, 2, 2, 2, 1, 1, 1, 1, 1, 1)
# Orders in which each channel quarter visits the three new positions of a 2x2 cell.
QUARTER_PERMS: tuple[tuple[int, int, int], ...] = ((0, 1, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
LATENT_MULTIPLE = 4  # latent height/width must be a multiple of this (image: 64)
_PERIOD = 8


def _step_pattern(channels: int) -> np.ndarray:
    """(channels, 8, 8) int array: the 0-based step at which each (channel, i mod 8, j mod 8) is coded."""
    pattern = np.empty((channels, _PERIOD, _PERIOD), dtype=np.int64)
    for c in range(channels):
        half = 0 if c < channels // 2 else 1
        perm = QUARTER_PERMS[min(3, c * 4 // channels)]
        for i in range(_PERIOD):
            for j in range(_PERIOD):
                if i % 4 == 0 and j % 4 == 0:
                    checker = ((i // 4) + (j // 4)) % 2
                    pattern[c, i, j] = 0 if checker == half else 1
                elif i % 2 == 0 and j % 2 == 0:
                    r = {(0, 1): 0, (1, 0): 1, (1, 1): 2}[((i // 2) % 2, (j // 2) % 2)]
                    pattern[c, i, j] = 2 + perm[r]
                else:
                    r = {(0, 1): 0, (1, 0): 1, (1, 1): 2}[(i % 2, j % 2)]
                    parity = ((i // 2) + (j // 2)) % 2
                    pattern[c, i, j] = 5 + 2 * perm[r] + parity
    return pattern


def step_map(channels: int, height: int, width: int) -> np.ndarray:
    """(channels, height, width) int64: step index of every latent element."""
    if height % LATENT_MULTIPLE or width % LATENT_MULTIPLE:
        raise ValueError(f"latent size {height}x{width} is not a multiple of {LATENT_MULTIPLE}")
    pattern = _step_pattern(channels)
    reps = (1, -(-height // _PERIOD), -(-width // _PERIOD))
    return np.tile(pattern, reps)[:, :height, :width]


def step_masks(channels: int, height: int, width: int) -> np.ndarray:
    """(11, channels, height, width) float32 one-hot masks, one per step."""
    smap = step_map(channels, height, width)
    return np.stack([(smap == k) for k in range(NUM_STEPS)]).astype(np.float32)


def known_before(channels: int, height: int, width: int) -> np.ndarray:
    """(11, channels, height, width) float32: 1 where the element is already decoded before step k."""
    smap = step_map(channels, height, width)
    return np.stack([(smap < k) for k in range(NUM_STEPS)]).astype(np.float32)

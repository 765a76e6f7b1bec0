"""Learned image compression, the shared part: the coding procedure, bitstream, schedule and pmf tables."""

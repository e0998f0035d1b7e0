"""Lossless speculative decoding: drafters guess, the target verifies a batch in one forward,
and a scheduler driven by the measured cost profile decides how much to guess."""

"""Math core of the memorization-discrepancy (MD) defense, free of Flower.

- `md`: per-sample MD of candidate models against a historical model (batched with vmap).
- `history`: ring buffer of past global models as flat tensors.
- `thresholds`: the paper's threshold schedule and a robust (median/MAD) alternative.
- `correction`: the largest update scale that keeps MD under a threshold.
"""

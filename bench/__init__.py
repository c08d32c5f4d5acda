"""Measurements, never tests: throughput of the training step, the loaders, the augmentation
paths, the scripts end to end and evaluation; the GPU check (`gpu_check.sh`, `gpu_parity.py`) and
the project's wall-time estimate. Results go in docs/speed.md with the command that produced them."""

"""Run plumbing shared by the training and evaluation scripts, one module per concern:
`args` (flag groups), `checkpoint` (save, load, resume checks), `logger` (W&B + JSON lines),
`loop` (the epoch loop and learning-rate schedule), `run` (a training run from start to report)."""

"""The training run, above the evaluator and below the methods: `args` (the flag groups the scripts
share), `official_flags` (the release's flags and what replaces them), `checkpoint` (the official
format, read without executing code), `checkpointer` (the one object that saves and restores a run),
`loop` (phases and epochs, learning-rate schedule, AMP, stop and resume) and `run` (a training run
from its data and header to its final report). A method's own logic goes in `methods/`, process
plumbing in `runtime/`, evaluation in `eval/`, what is published in `published/`."""

"""The training run, above evaluation and below the methods: `args` (the flag groups the scripts
share), `official_flags` (the release's flags and what replaces them), `checkpoint` (save, load,
resume checks), `loop` (the epoch loop, learning-rate schedule, AMP, stop and resume) and `run` (a
training run from its data and header to its final report). A method's own logic goes in
`methods/`, process plumbing in `runtime/`, evaluation in `eval/`."""

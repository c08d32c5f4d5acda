"""Process plumbing beneath evaluation and training: which device and process group this process
belongs to (`distributed`: torchrun, srun, NCCL/gloo, DDP wrapping, rank-0 gating, reductions),
BatchNorm statistics over the global batch (`global_batchnorm`), what a run prints and logs
(`logger`: W&B and JSON lines, progress lines) and stopping on a signal (`preemption`, with the RNG
streams a resumed run restores). No training or evaluation logic lives here: `eval/` and `engine/`
both build on it, and it imports neither."""

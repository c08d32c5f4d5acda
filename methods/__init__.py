"""Training methods, one module each, registered by name: SKD's two generations, the RFS baselines,
SSKD and DVP's two phases. A method owns how it trains: its flags and their checks, how its network
(and any extra heads) is built, its phases and training step, what it checkpoints beside "model", its
run-name part, its per-epoch hooks and its frozen-teacher checks; what is published about it is its
card in published/. `methods.train` is the wiring both training scripts share. docs/methods.md shows
how to add one."""
from methods.base import DISTILL_SCRIPT, GEN0_SCRIPT, DistillationMethod, Gen0Method, Method
from methods.registry import (MethodArgumentParser, add_method_args, default_method, get_method, method_names,
                              method_of_training_args, methods_of_script, register_method, select_method)
from methods.training import train
# Registered in this order, teachers before their students; the paper's rows first.
from methods import rfs_simple, rfs_distill, skd_gen0, skd_gen1, sskd, dvp_prior, dvp  # noqa: E402,F401

__all__ = ["DISTILL_SCRIPT", "GEN0_SCRIPT", "DistillationMethod", "Gen0Method", "Method", "MethodArgumentParser",
           "add_method_args", "default_method", "get_method", "method_names", "method_of_training_args",
           "methods_of_script", "register_method", "select_method", "train"]

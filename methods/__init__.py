"""Training methods, one module each, registered by name: SKD's two generations, the RFS baselines,
SSKD and DVP's two phases. A method owns its flags and their checks, how its network (and any extra
heads) is built, its training step, what it checkpoints beside "model", its run-name part and W&B
job type, its per-epoch hooks, its frozen-teacher checks and its published settings; the training
scripts look it up and wire it. docs/methods.md shows how to add one."""
from methods.base import DISTILL_SCRIPT, GEN0_SCRIPT, DistillationMethod, Gen0Method, Method
from methods.registry import (MethodArgumentParser, add_method_args, get_method, method_names, method_of_training_args, methods_of_script,
                              register_method, select_method, selection)
# Registered in this order, teachers before their students; the paper's rows first.
from methods import rfs_simple, rfs_distill, skd_gen0, skd_gen1, sskd, dvp_prior, dvp  # noqa: E402,F401

__all__ = ["DISTILL_SCRIPT", "GEN0_SCRIPT", "DistillationMethod", "Gen0Method", "Method", "add_method_args",
           "get_method", "method_names", "method_of_training_args", "methods_of_script", "register_method",
           "select_method", "selection", "MethodArgumentParser"]

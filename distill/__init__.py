"""Objectives as pure functions of tensors: rotations, and every method's losses (Gen-0, Gen-1,
RFS-distill, SSKD, DVP). No modules, optimizers or data: a method in methods/ calls them in its step."""
from distill.losses import (cross_entropy_loss, gen0_loss, gen1_loss, kd_loss, rfs_distill_loss, rotation_loss,
                            twin_l2_loss)
from distill.rotation import four_rotations, rot90, rot180, rot270, rotate

__all__ = ["cross_entropy_loss", "four_rotations", "gen0_loss", "gen1_loss", "kd_loss", "rfs_distill_loss", "rot90",
           "rot180", "rot270", "rotate", "rotation_loss", "twin_l2_loss"]

"""SKD objectives: rotations and losses, as pure functions of tensors."""
from distill.losses import (cross_entropy_loss, gen0_loss, gen1_loss, kd_loss, rfs_distill_loss, rotation_loss,
                            twin_l2_loss)
from distill.rotation import four_rotations, rot90, rot180, rot270, rotate

__all__ = ["cross_entropy_loss", "four_rotations", "gen0_loss", "gen1_loss", "kd_loss", "rfs_distill_loss", "rot90",
           "rot180", "rot270", "rotate", "rotation_loss", "twin_l2_loss"]

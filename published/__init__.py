"""What is published about each method, apart from the code that trains it: its card (name, table
label, how its script selects it, its teacher, the paper's accuracies, the settings it was trained
with on each dataset, each value with its source) and the evaluation protocol. Data only: nothing
here imports the project's other packages, so the results table (eval/), the training scripts'
defaults (methods/) and the reproduction driver (scripts/) all read one copy."""
from published.cards import (DISTILL_SCRIPT, GEN0_SCRIPT, PAPER_NETWORK, MethodCard, Reported, add_cards, card,
                             card_of_args, card_of_training_args, cards, generation_of)
from published.dvp import DVP_CARD, DVP_PRIOR_CARD
from published.rfs import RFS_DISTILL_CARD, RFS_SIMPLE_CARD
from published.skd import SKD_GEN0_CARD, SKD_GEN1_CARD
from published.sskd import SSKD_CARD

# The table's order: the paper's rows (baselines first), then the relatives; teachers before their students.
add_cards(RFS_SIMPLE_CARD, RFS_DISTILL_CARD, SKD_GEN0_CARD, SKD_GEN1_CARD, SSKD_CARD, DVP_PRIOR_CARD, DVP_CARD)

__all__ = ["DISTILL_SCRIPT", "GEN0_SCRIPT", "PAPER_NETWORK", "MethodCard", "Reported", "card", "card_of_args",
           "card_of_training_args", "cards", "generation_of"]

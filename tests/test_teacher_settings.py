"""Gen-1 takes what its teacher records: a Gen-0 teacher trained on a `folder` dataset of 28 px images
gives its student the dataset, data root, image size and normalisation the command line leaves out (each
said in a `setting:` line naming the teacher, before the published settings are resolved for that
dataset), and a given value that contradicts it is refused in one line naming the teacher's value and
the flag that gives it."""
from __future__ import annotations

import re
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TEST_MODEL, fake_images, run_script
from util import UsageError

IMAGE_SIZE = 28
RUN = ["--batch_size", "8", "--num_workers", "0", "--device", "cpu", "--amp", "off", "--epochs", "1",
       "--lr_decay_epochs", "1", "--no_final_eval"]


def write_image_folder(root: Path) -> Path:
    """DIR/{train,val,test}/<class>/*.png of IMAGE_SIZE px: 4 training classes of 4 images, 5 of 4 for val, test."""
    rng = np.random.RandomState(0)
    for split, first, classes in (("train", 0, 4), ("val", 10, 5), ("test", 20, 5)):
        for label in range(first, first + classes):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True)
            for i, image in enumerate(fake_images(rng, np.full(4, label), IMAGE_SIZE)):
                Image.fromarray(image).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> dict[str, str]:
    """A Gen-0 checkpoint trained once (one epoch) on the folder, and the folder."""
    root = tmp_path_factory.mktemp("teacher_settings")
    data = write_image_folder(root / "images")
    done = run_script("train_supervised_ssl.py", *RUN, "--model", TEST_MODEL, "--dataset", "folder",
                      "--data_root", str(data), "--model_path", str(root / "gen0"))
    assert done.returncode == 0, done.stderr[-3000:]
    [folder] = (root / "gen0").iterdir()
    return {"path": str(folder / "checkpoint.pth"), "data": str(data), "save": str(root / "gen1")}


def distill(teacher: dict[str, str], *flags: str):
    return run_script("train_distillation.py", "--path_t", teacher["path"], *RUN, "--model_path", teacher["save"],
                      *flags)


def test_gen1_takes_the_teachers_dataset_data_root_image_size_and_normalization(teacher):
    done = distill(teacher)
    assert done.returncode == 0, done.stderr[-3000:]
    settings = [line for line in done.stdout.splitlines() if line.startswith("setting: ")]
    source = f"(the teacher's, {teacher['path']})"
    assert settings[:3] == [f"setting: --dataset folder {source}", f"setting: --data_root {teacher['data']} {source}",
                            f"setting: --image_size {IMAGE_SIZE} {source}"]
    assert settings[3].startswith("setting: --normalization auto: mean (") and settings[3].endswith(source)
    # The published settings are then resolved for the teacher's dataset (none published: the defaults), not
    # refused on miniImageNet's swept beta.
    assert "setting: --epochs 1 (given)" in settings
    assert any(line.endswith("(default; nothing published for --dataset folder)") for line in settings), settings
    [folder] = Path(teacher["save"]).iterdir()
    assert folder.name.startswith(f"S_{TEST_MODEL}_T_{TEST_MODEL}_folder_")


@pytest.mark.parametrize("flag, given, recorded", [("--image_size", "32", "28 px images"),
                                                   ("--dataset", "CIFAR-FS", "folder")])
def test_a_given_value_other_than_the_teachers_is_refused_naming_the_fix(teacher, flag, given, recorded):
    done = distill(teacher, flag, given)
    fix = recorded.split()[0]
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: {flag} {given}: the teacher {teacher['path']} was trained on {recorded}; give {flag} {fix} "
        f"(or leave it out to take the teacher's)"]


def test_an_official_teacher_records_nothing_and_the_flags_defaults_stay():
    import train_distillation

    parser = train_distillation.get_args_parser()
    parser.before_published = lambda method, args: train_distillation.take_teacher_settings(args, {"model": {}})
    args = parser.parse_args(["--path_t", "t.pth", "-r", "0.05"])
    assert (args.dataset, args.data_root, args.image_size, args.normalization) == ("miniImageNet", None, None, "auto")
    assert not any("the teacher's" in line for line in parser.settings)
    assert parser.settings[0].startswith("--epochs 8 (published: SKD release run.sh, miniImageNet")  # as before


def test_a_given_normalization_other_than_the_teachers_is_refused_naming_the_fix():
    from published.profiles import NAMED_NORMALIZATIONS, Normalization
    from train_distillation import check_teacher_normalization

    args = Namespace(path_t="t.pth", normalization="imagenet", allow_teacher_mismatch=False)
    checkpoint = {"normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    with pytest.raises(UsageError, match=re.escape(
            "--normalization imagenet: the teacher t.pth was trained with mean (0.5, 0.5, 0.5), std (0.25, 0.25, "
            "0.25); leave --normalization out (or give auto) to take the teacher's")):
        check_teacher_normalization(args, checkpoint, NAMED_NORMALIZATIONS["imagenet"])
    check_teacher_normalization(args, checkpoint, Normalization((0.5,) * 3, (0.25,) * 3))  # the teacher's constants
    args.allow_teacher_mismatch = True
    check_teacher_normalization(args, checkpoint, NAMED_NORMALIZATIONS["imagenet"])

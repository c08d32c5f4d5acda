"""Studies (issue 41): sweeps of any training flag, born-again generations and teacher choice, each decided on
val episodes by scripts/study.py; the test split is evaluated for the chosen only. The plans run with stand-in
stages (tests/test_reproduce.py's _FakeStages: each evaluation's mean is its position in the run, so later is
better); one slow test runs a real study on images whose test split cannot be read."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_script
from test_reproduce import _FakeStages, flags, reproduce  # noqa: F401 (reproduce: a fixture)
from test_slurm_submit import slurm  # noqa: F401 (a fixture)

MINI = "miniImageNet_category_split_{}.pickle"


def mini_root(tmp_path: Path) -> Path:
    """What the plan checks for before training miniImageNet (the stand-in stages read nothing)."""
    (tmp_path / "miniImageNet").mkdir()
    for split in ("train_phase_train", "val", "test"):
        (tmp_path / "miniImageNet" / MINI.format(split)).touch()
    return tmp_path


def run_plan(reproduce, monkeypatch, tmp_path, *argv: str):
    stages = _FakeStages(monkeypatch)
    done = reproduce("--dataset", "miniImageNet", "--data_root", str(mini_root(tmp_path)), "--output",
                     str(tmp_path / "out"), "--seeds", "0", "--wandb_group", "g", *argv)
    assert done.returncode == 0, done.stderr
    return stages, done


def trained(stages) -> list[dict]:
    return [flags(c) for c in stages.commands if Path(c[1]).name != "eval_fewshot.py"]


def evaluations(stages) -> list[dict]:
    return [flags(c) for c in stages.commands if Path(c[1]).name == "eval_fewshot.py"]


def record(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "out" / "selections" / f"{name}.json").read_text())


# ----------------------------------------------------------------------------- --sweep

def test_parse_sweep_reads_values_methods_and_comma_lists_and_refuses_in_one_line():
    from scripts.study import Sweep, parse_sweep
    import util

    assert parse_sweep("beta=0.1,0.2") == Sweep("beta", ("0.1", "0.2"))
    assert parse_sweep("skd_gen1:--learning_rate=0.01,0.001") == Sweep("learning_rate", ("0.01", "0.001"), "skd_gen1")
    assert parse_sweep("lr_decay_epochs=3,4;5,6") == Sweep("lr_decay_epochs", ("3,4", "5,6"))
    assert parse_sweep("lr_decay_epochs=3,4;5,6").text == "lr_decay_epochs=3,4;5,6"
    for bad in ("beta", "beta=", "beta=0.1", "beta=0.1,0.1", ":beta=1,2", "=1,2"):
        with pytest.raises(util.UsageError, match=r"^--sweep "):
            parse_sweep(bad)


def test_a_sweep_of_a_flag_its_folder_name_does_not_say_puts_each_value_in_a_folder_of_its_own(
        reproduce, monkeypatch, tmp_path):
    stages, done = run_plan(reproduce, monkeypatch, tmp_path, "--methods", "skd_gen1",
                            "--sweep", "learning_rate=0.01,0.001", "--sweep", "kd_T=2,4")
    runs = trained(stages)[1:]  # after the Gen-0 teacher, a grid of 2 x 2 x 3 (the published beta sweep)
    assert len(runs) == 12
    assert {(r["--learning_rate"], r["--kd_T"], r["--gamma"]) for r in runs} == {
        (lr, t, b) for lr in ("0.01", "0.001") for t in ("2", "4") for b in ("0.025", "0.05", "0.075")}
    # kd_T and beta are in the run name, the learning rate is not: each configuration gets a folder of its own.
    assert {r["--model_path"] for r in runs} == {str(tmp_path / "out" / f"beta_{b}_kd_T_{t}_learning_rate_{lr}")
                                                 for lr in ("0.01", "0.001") for t in ("2", "4")
                                                 for b in ("0.025", "0.05", "0.075")}
    chosen = record(tmp_path, "skd_gen1_seed_0_gen1")
    assert len(chosen["candidates"]) == 12 and chosen["split"] == "val"
    tests = [e for e in evaluations(stages) if e["--split"] == "test"]
    assert [e["--model_path"] for e in tests] == [chosen["chosen"]["1"], chosen["chosen"]["5"]]
    assert "(swept [--sweep learning_rate=0.01,0.001])" in done.stdout


def test_a_sweep_nothing_takes_is_refused_in_one_line(reproduce):
    for argv, expected in ((["--sweep", "sskd_kd_T=1,2"], "no method of the plan (skd_gen0, skd_gen1) takes sskd_kd_T"),
                           (["--sweep", "rfs_distill:kd_T=1,2"], "(rfs_distill is not in the plan)"),
                           (["--sweep", "seed=1,2"], "--sweep seed=1,2: --seed is the plan's to set")):
        done = reproduce("--dataset", "miniImageNet", "--methods", "skd_gen0,skd_gen1", "--data_root", "DATA",
                         "--output", "o", "--dry_run", *argv)
        assert done.returncode == 2 and expected in done.stderr.strip().splitlines()[-1], done.stderr


def test_an_unnamed_sweep_reaches_only_the_methods_the_table_shows(reproduce, monkeypatch, tmp_path):
    stages, _ = run_plan(reproduce, monkeypatch, tmp_path, "--methods", "skd_gen1", "--sweep", "epochs=1,2")
    gen0, *gen1 = trained(stages)
    assert gen0["--epochs"] == "65" and {r["--epochs"] for r in gen1} == {"1", "2"}


def test_release_sweeps_run_the_release_seven_betas_on_fc100(reproduce):
    done = reproduce("--dataset", "FC100", "--methods", "skd_gen1", "--seeds", "0", "--release_sweeps",
                     "--data_root", "DATA", "--output", "o", "--wandb_group", "g", "--dry_run")
    assert done.returncode == 0, done.stderr
    betas = [flags(c)["--gamma"] for c in map(str.split, done.stdout.splitlines())
             if c and c[0] != "#" and "train_distillation.py" in c[1]]
    assert betas == ["0.025", "0.05", "0.075", "0.1", "0.15", "0.2", "0.25"]
    assert "looped over params[0..6]" in done.stdout and "# 25 stages: 8 training runs, 16 evaluations, 1 selections" \
        in done.stdout


def test_report_all_evaluates_every_candidate_on_test_and_keeps_the_choice(reproduce, monkeypatch, tmp_path):
    stages, _ = run_plan(reproduce, monkeypatch, tmp_path, "--methods", "skd_gen1", "--report", "all")
    tests = {e["--model_path"] for e in evaluations(stages) if e["--split"] == "test"}
    assert len(tests) == 3 and record(tmp_path, "skd_gen1_seed_0_gen1")["chosen"]["1"] in tests


# ----------------------------------------------------------------------------- --generations, --teachers

def test_generations_chain_each_student_to_the_val_choice_of_the_one_before(reproduce, monkeypatch, tmp_path):
    stages, done = run_plan(reproduce, monkeypatch, tmp_path, "--methods", "skd_gen1", "--generations", "3")
    runs = trained(stages)
    assert len(runs) == 1 + 3 * 3  # Gen-0, then three generations of the three published betas
    link1 = tmp_path / "out" / "selections" / "skd_gen1_seed_0_gen1" / "checkpoint.pth"
    link2 = tmp_path / "out" / "selections" / "skd_gen1_seed_0_gen2" / "checkpoint.pth"
    assert [r["--path_t"] for r in runs[4:7]] == [str(link1)] * 3
    assert [r["--path_t"] for r in runs[7:]] == [str(link2)] * 3
    assert {r["--model_path"] for r in runs[4:7]} == {str(tmp_path / "out" / "gen2")}
    assert link2.resolve() == Path(record(tmp_path, "skd_gen1_seed_0_gen2")["teacher"]).resolve()
    # Each generation's students train after its selection, which comes after every candidate's val.
    order = [c for c in done.stdout.splitlines() if c.startswith("== ")]
    assert order.index(next(l for l in order if "skd_gen1 seed 0: val's choice" in l)) < \
        order.index(next(l for l in order if "generation 2 seed 0, beta 0.025" in l))
    tests = [e for e in evaluations(stages) if e["--split"] == "test"]
    assert len(tests) == 3 * 2  # the chosen of each generation, 1- and 5-shot


def test_generations_of_rfs_distill_and_a_method_without_a_chain(reproduce):
    done = reproduce("--dataset", "miniImageNet", "--methods", "rfs_distill,sskd", "--seeds", "0", "--generations",
                     "2", "--data_root", "DATA", "--output", "o", "--wandb_group", "g", "--dry_run")
    assert done.returncode == 0, done.stderr
    labels = [line for line in done.stdout.splitlines() if line.startswith("# rfs_distill") or line.startswith("# sskd")]
    assert [l.split(":")[0] for l in labels] == ["# rfs_distill seed 0", "# rfs_distill generation 2 seed 0",
                                                 "# sskd seed 0"]


def test_teachers_trains_k_per_seed_and_the_val_choice_teaches(reproduce, monkeypatch, tmp_path):
    stages, _ = run_plan(reproduce, monkeypatch, tmp_path, "--methods", "skd_gen0,skd_gen1", "--teachers", "3",
                         "--sweep", "beta=0.1,0.2")
    gen0 = [r for r in trained(stages) if "--path_t" not in r]
    assert [(r["--seed"], r["--trial"]) for r in gen0] == [("0", "0"), ("1000", "0"), ("2000", "0")]
    assert [r["--model_path"] for r in gen0] == [str(tmp_path / "out" / p) for p in ("", "teacher1", "teacher2")]
    choice = record(tmp_path, "skd_gen0_seed_0_gen0")
    assert [c["seed"] for c in choice["candidates"]] == [0, 1000, 2000]
    students = [r for r in trained(stages) if "--path_t" in r]
    assert {r["--path_t"] for r in students} == {str(tmp_path / "out" / "selections" / "skd_gen0_seed_0_gen0" /
                                                     "checkpoint.pth")}
    gen0_tests = [e for e in evaluations(stages) if e["--split"] == "test" and "S_" not in e["--model_path"]]
    assert [e["--model_path"] for e in gen0_tests] == [choice["chosen"]["1"], choice["chosen"]["5"]]


def test_a_teacher_the_table_does_not_show_is_chosen_on_val_and_never_tested(reproduce, monkeypatch, tmp_path):
    stages, _ = run_plan(reproduce, monkeypatch, tmp_path, "--methods", "skd_gen1", "--teachers", "2",
                         "--sweep", "beta=0.1,0.2")
    gen0_evals = [e for e in evaluations(stages) if "S_" not in e["--model_path"]]
    assert sorted(e["--split"] for e in gen0_evals) == ["val"] * 4


def test_selection_refuses_candidates_evaluated_on_different_episodes_and_breaks_ties_by_plan_order(tmp_path):
    from scripts.study import Candidate, select
    import util

    candidates = []
    for name, fingerprint in (("a", "f"), ("b", "f")):
        (tmp_path / name).mkdir()
        for shots in (1, 5):
            (tmp_path / name / f"results_val_{shots}shot.json").write_text(
                json.dumps({"results": [{"mean": 60.0, "fingerprint": fingerprint}]}))
        candidates.append(Candidate(tmp_path / name / "checkpoint.pth", {}, 0))
    content = select(candidates, (1, 5), what={}, record=tmp_path / "s.json", link=None)
    assert content["chosen"] == {"1": str(candidates[0].checkpoint), "5": str(candidates[0].checkpoint)}
    (tmp_path / "b" / "results_val_1shot.json").write_text(json.dumps({"results": [{"mean": 1.0, "fingerprint": "g"}]}))
    with pytest.raises(util.UsageError, match="evaluated on different episodes"):
        select(candidates, (1, 5), what={}, record=tmp_path / "s.json", link=None)


def test_wandb_sweep_writes_a_grid_of_the_plans_command_with_the_swept_flag_left_to_the_agent(reproduce, tmp_path):
    target = tmp_path / "sweep.yaml"
    done = reproduce("--dataset", "miniImageNet", "--methods", "skd_gen1", "--seeds", "0,1", "--data_root", "DATA",
                     "--output", "o", "--wandb_group", "g", "--wandb_sweep", str(target))
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "sweep_seed1.yaml").read_text())
    assert config["method"] == "grid" and config["parameters"] == {"gamma": {"values": ["0.025", "0.05", "0.075"]}}
    assert config["command"][:3] == ["${env}", "${interpreter}", "${program}"] and config["command"][-1] == "${args}"
    fixed = flags(config["command"][3:-1])
    assert "--gamma" not in fixed and fixed["--seed"] == "1" and config["program"].endswith("train_distillation.py")
    refused = reproduce("--dataset", "miniImageNet", "--methods", "skd_gen1", "--data_root", "DATA", "--output", "o",
                        "--sweep", "learning_rate=0.1,0.01", "--wandb_sweep", str(target))
    assert refused.returncode == 2 and "run-folder name does not say" in refused.stderr


# ----------------------------------------------------------------------------- reading a study

def _results(folder: Path, seed: int, means: dict[str, float], path_t: str | None = None, generation=None):
    """An eval_fewshot.py results file per split and shot count, with per-episode accuracies."""
    folder.mkdir(parents=True, exist_ok=True)
    args = {"epochs": 2, "seed": seed, "dataset": "CIFAR-FS", **({"path_t": path_t} if path_t else {}),
            **({"generation": generation} if generation else {})}
    (folder / "args.json").write_text(json.dumps(args))
    for key, mean in means.items():
        split, shots = key.split()
        accuracies = (np.full(10, mean / 100)).tolist()
        (folder / f"results_{split}_{shots}shot.json").write_text(json.dumps({
            "checkpoint": str(folder / "checkpoint.pth"), "checkpoint_choice": "last epoch", "dataset": "CIFAR-FS",
            "results": [{"split": split, "n_ways": 5, "n_shots": int(shots), "n_queries": 15, "n_episodes": 10,
                         "n_aug": 5, "embedding": "feature", "classifier": "LR", "image_size": 32, "mean": mean,
                         "fingerprint": f"{split}{shots}", "accuracies": accuracies}]}))


def test_the_table_takes_each_candidate_for_the_shot_count_val_chose_it_and_lists_every_candidate(tmp_path):
    from eval import table

    out = tmp_path / "out"
    a, b = out / "a", out / "teacher1" / "a"
    _results(a, 0, {"val 1": 60, "val 5": 70, "test 1": 50, "test 5": 80})
    _results(b, 1000, {"val 1": 55, "val 5": 75, "test 1": 52, "test 5": 78})
    _results(out / "s1", 0, {"test 1": 51, "test 5": 79}, path_t="x")
    _results(out / "gen2" / "s2", 0, {"test 1": 53, "test 5": 81}, path_t="y", generation=2)
    (out / "selections").mkdir()
    (out / "selections" / "skd_gen0_seed_0_gen0.json").write_text(json.dumps({
        "method": "skd_gen0", "seed": 0, "generation": 0, "chosen": {"1": "o/a/c.pth", "5": "o/t/a/c.pth"},
        "teacher": "o/a/c.pth", "candidates": [
            {"checkpoint": "o/a/c.pth", "folder": "a", "configuration": {}, "seed": 0},
            {"checkpoint": "o/t/a/c.pth", "folder": "teacher1/a", "configuration": {}, "seed": 1000}]}))
    result = table.main([str(out), "--out", str(tmp_path / "t")])
    assert result.cells[("skd_gen0", "CIFAR-FS", 1)].mean == pytest.approx(50)  # a, chosen for 1-shot
    assert result.cells[("skd_gen0", "CIFAR-FS", 5)].mean == pytest.approx(78)  # b (seed 1000) for 5-shot
    assert result.cells[("skd_gen0", "CIFAR-FS", 5)].seeds == 1
    assert result.methods == ["skd_gen0", "skd_gen1", "skd_gen1:gen2"]
    text = (tmp_path / "t.md").read_text()
    assert "| SKD Gen-0, seed 0 | a | — | 60.00 | 70.00 | 50.00 | 80.00 | 1-shot, teaches |" in text
    assert "| SKD Gen-0, seed 0 | teacher1/a | — (seed 1000) | 55.00 | 75.00 | 52.00 | 78.00 | 5-shot |" in text
    assert "| SKD Gen-1, generation 2 |" in text


# ----------------------------------------------------------------------------- born-again teachers

def test_a_student_of_a_student_is_accepted_as_a_teacher_and_counts_its_generation():
    import argparse

    import methods
    import published
    import train_distillation

    gen1 = {"objective": "skd", "path_t": "gen0.pth", "epochs": 1, "dataset": "CIFAR-FS"}
    args = argparse.Namespace(allow_teacher_mismatch=False, dataset="CIFAR-FS", path_t="gen1.pth", objective="skd")
    for method in ("skd_gen1", "rfs_distill"):  # the two chains of reproduce.py --generations
        train_distillation.check_teacher_matches_run(args, methods.get_method(method), {"args": gen1,
                                                                                          "image_size": 32}, 32)
    assert published.generation_of(gen1) == 1 and published.generation_of({**gen1, "generation": 2}) == 2
    assert published.generation_of({"objective": "skd", "epochs": 1}) == 0


# ----------------------------------------------------------------------------- a real study

@pytest.mark.slow
def test_a_real_sweep_never_reads_the_test_split_before_its_choice(tmp_path):
    """Real training and evaluation on images whose test split cannot be decoded: every candidate trains, is
    evaluated on val and chosen; only the chosen ones' test evaluations fail. With the test images restored the
    same command runs those two evaluations and nothing else."""
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, classes in (("train", 6), ("val", 5), ("test", 5)):
        for c in range(classes):
            (tmp_path / "data" / split / f"{split}{c}").mkdir(parents=True)
            for i in range(20):  # an episode draws 5 support and 15 query images a class
                pixels = (rng.rand(16, 16, 3) * 60 + 30 * (c % 3)).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / f"{split}{c}" / f"{i}.png")
    test_images = sorted((tmp_path / "data" / "test").rglob("*.png"))
    kept = {p: p.read_bytes() for p in test_images}
    for p in test_images:
        p.write_bytes(b"not an image")
    argv = ("scripts/reproduce.py", "--dataset", "folder", "--data_root", str(tmp_path / "data"), "--seeds", "0",
            "--methods", "skd_gen0", "--sweep", "gamma=1,2", "--episodes", "4", "--output", str(tmp_path / "out"),
            "--device", "cpu", "--amp", "fp32", "--", "--model", "resnet12_ssl_narrow", "--epochs", "1",
            "--batch_size", "8", "--augment", "workers", "--num_workers", "0")
    first = run_script(*argv, timeout=900)
    assert first.returncode != 0
    assert "skd_gen0 seed 0: test 1-shot of val's choice" in first.stderr
    assert "test 5-shot of val's choice" in first.stderr
    choice = json.loads((tmp_path / "out" / "selections" / "skd_gen0_seed_0_gen0.json").read_text())
    assert [c["configuration"] for c in choice["candidates"]] == [{"gamma": "1"}, {"gamma": "2"}]
    assert not list((tmp_path / "out").rglob("results_test_*"))
    for p, content in kept.items():
        p.write_bytes(content)
    second = run_script(*argv, timeout=900)
    assert second.returncode == 0, second.stderr
    ran = [line for line in second.stdout.splitlines() if line.startswith("$ ")]
    assert len(ran) == 2 and all("--split test" in line for line in ran)
    assert {p.parent for p in (tmp_path / "out").rglob("results_test_*")} == {
        Path(choice["chosen"][k]).parent for k in ("1", "5")}


def test_plot_sweep_draws_accuracy_against_the_swept_value_pooled_over_seeds(tmp_path):
    pytest.importorskip("matplotlib")
    from eval.table import find_selections
    from tools import plot

    out = tmp_path / "out"
    (out / "selections").mkdir(parents=True)
    for seed in (0, 1):
        candidates = []
        for beta, val in (("0.1", 60 + seed), ("0.2", 62 + seed)):
            folder = out / f"S_beta_{beta}_trial_{seed}"
            _results(folder, seed, {"val 1": val, "val 5": val + 10, **({"test 1": 50.0} if beta == "0.2" else {})},
                     path_t="t")
            candidates.append({"checkpoint": str(folder / "c.pth"), "folder": folder.name,
                               "configuration": {"beta": beta}, "seed": seed})
        (out / "selections" / f"skd_gen1_seed_{seed}_gen1.json").write_text(json.dumps({
            "method": "skd_gen1", "seed": seed, "generation": 1, "candidates": candidates,
            "chosen": {"1": candidates[1]["checkpoint"], "5": candidates[1]["checkpoint"]},
            "teacher": candidates[1]["checkpoint"]}))
    points = plot.sweep_points(find_selections([str(out)]))
    val1 = points[("skd_gen1", 1, 1, "val", "beta", ())]
    assert {v: np.mean(a) * 100 for v, a in val1.items()} == pytest.approx({("0.1",): 60.5, ("0.2",): 62.5})
    assert len(val1[("0.1",)]) == 20  # 10 episodes x 2 seeds, pooled
    assert list(points[("skd_gen1", 1, 1, "test", "beta", ())]) == [("0.2",)]  # only the chosen were tested
    written = plot.main(["sweep", str(out), "--out", str(tmp_path / "chart" / "sweep")])
    assert [p.name for p in written] == ["sweep.png", "sweep.svg"] and all(p.stat().st_size > 0 for p in written)



def test_a_study_under_slurm_selects_in_a_small_job_that_the_chosen_ones_tests_and_the_next_generation_wait_for(
        reproduce, slurm, tmp_path):
    from test_reproduce import _tiny_folder
    from test_slurm_submit import after, directive, stage_of

    argv = ["--dataset", "folder", "--data_root", str(_tiny_folder(tmp_path / "data")), "--output",
            str(tmp_path / "out"), "--seeds", "0", "--wandb_group", "g", "--methods", "skd_gen1", "--sweep",
            "beta=0.1,0.2", "--generations", "2", "--submit", "slurm"]
    done = reproduce(*argv)
    assert done.returncode == 0, done.stderr
    jobs = {stage_of(j["script"]): j for j in slurm.jobs()}
    ids = {stage: j["id"] for stage, j in jobs.items()}
    select1, select2 = "select skd_gen1_seed_0_gen1", "select skd_gen1_seed_0_gen2"
    vals1 = {ids[s] for s in ids if s.startswith("eval S_") and " val " in s}
    assert len(vals1) == 4 and after(jobs[select1]["script"]) == vals1
    script = jobs[select1]["script"]
    assert directive(script, "gpus") is None and directive(script, "time") == "00:10:00"
    assert directive(script, "cpus-per-task") == "1"
    gen2 = [s for s in ids if s.startswith("train gen2/")]
    assert len(gen2) == 2 and all(after(jobs[s]["script"]) == {ids[select1]} for s in gen2)
    # A later generation's training job asks for a training run's time, not an evaluation's.
    times = {s: directive(jobs[s]["script"], "time") for s in ids}
    assert {times[s] for s in gen2} == {times[s] for s in ids if s.startswith("train S_")} == {"0-01:00:00"}
    for generation, select in ((1, select1), (2, select2)):
        for shots in (1, 5):
            test = f"test skd_gen1_seed_0_gen{generation} {shots}shot"
            assert after(jobs[test]["script"]) == {ids[select]}
    for job in jobs.values():  # SLURM opens each job's log file before the job starts: its folder must exist
        assert Path(directive(job["script"], "output")).parent.is_dir()
    # The selection job runs its one stage as the local plan would: it waits for the val evaluations.
    early = reproduce(*argv[:-2], "--stage", select1)
    assert early.returncode == 2 and "waits for eval " in early.stderr

"""bench/project_wall_time.py's table schedule: one run per GPU, each student after its teacher."""
from __future__ import annotations

from bench.project_wall_time import schedule, table_stages

MINUTES = {"rfs_simple": 10.0, "rfs_distill": 12.0, "skd_gen0": 40.0, "skd_gen1": 5.0}


def test_one_gpu_runs_the_table_one_run_after_another_and_eight_wait_only_for_teachers():
    stages = table_stages("miniImageNet", MINUTES)
    assert len(stages) == 3 * (1 + 1 + 1 + 3)  # miniImageNet Gen-1 sweeps three betas
    assert schedule(stages, 1) == sum(minutes for _, minutes, _ in stages)
    # 8 GPUs: the three Gen-0 runs start at once; their 9 students follow on 8 GPUs, one of them a step later.
    assert schedule(stages, 8) == 40.0 + 5.0 + 5.0
    assert schedule(stages, 100) == 40.0 + 5.0  # the longest teacher-student chain


def test_a_student_never_starts_before_its_teacher_ends():
    stages = [("t", 30.0, None), ("s", 1.0, "t"), ("x", 1.0, None)]
    assert schedule(stages, 2) == 31.0 and schedule(stages, 1) == 32.0

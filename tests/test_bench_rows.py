"""Every benchmark table names the CPU it ran on (issue: "state the CPU's flags in every benchmark table")."""

import torch

from sas_kit.cli import bench_train, machine


def test_bench_train_rows_name_the_cpu_flags_and_threads():
    row = bench_train._row("train after", "cpu", 8, 48, 6.0)
    assert set(bench_train.KEYS) == set(row)
    assert row["cpu"] == f"{machine.cpu_flags()}, {torch.get_num_threads()} threads"
    assert row["items_per_s"] == 8.0 and row["per_item_s"] == 0.125


def test_bench_score_names_the_threads_each_way_ran_with():
    from sas_kit.cli import bench_score

    with bench_score._way("fast-1thread"):
        assert torch.get_num_threads() == 1  # the way really runs on one thread ...
    assert bench_score.cpu_flags("fast-1thread").endswith(", 1 threads")  # ... and its row says so
    assert bench_score.cpu_flags("fast") == f"{machine.cpu_flags()}, {torch.get_num_threads()} threads"

"""The perf/ metrics of the actor-learner runners that say whether the machine is shared: the host's steal time."""

from decoupled.runners.training import async_actors
from decoupled.runners.training.async_actors import RolloutPerf, cpu_times


def test_cpu_times_reads_the_first_line_of_proc_stat_and_refuses_what_is_not_it(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 800 7 1 2 30 11 0\ncpu0 50 2 25 400 3 0 1 15 5 0\n")
    assert cpu_times(str(stat)) == (100, 5, 50, 800, 7, 1, 2, 30)  # guest (11) is inside user already
    stat.write_text("intr 1 2 3\n")
    assert cpu_times(str(stat)) is None
    stat.write_text("cpu  1 2 3\n")  # too few fields (a kernel without steal accounting)
    assert cpu_times(str(stat)) is None
    assert cpu_times(str(tmp_path / "missing")) is None


def test_the_steal_fraction_is_the_stolen_share_of_the_machine_time_since_the_last_record(monkeypatch):
    readings = iter(
        [(100, 0, 50, 800, 0, 0, 0, 50), (200, 0, 100, 1500, 0, 0, 0, 200), (200, 0, 100, 1500, 0, 0, 0, 200)]
    )
    monkeypatch.setattr(async_actors, "cpu_times", lambda: next(readings))
    perf = RolloutPerf()
    first = perf.metrics([], with_queue=False)
    assert first["perf/cpu_steal_fraction"] == 150 / 1000  # steal +150 of +1000 ticks in all
    assert "perf/cpu_steal_fraction" not in perf.metrics([], with_queue=False)  # no tick passed: no figure


def test_no_steal_figure_where_the_platform_has_no_proc_stat(monkeypatch):
    monkeypatch.setattr(async_actors, "cpu_times", lambda: None)
    assert "perf/cpu_steal_fraction" not in RolloutPerf().metrics([], with_queue=False)

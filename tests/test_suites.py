"""``harness suite``: suite definitions, planning against a results folder, the executors,
resuming a killed suite, and the published-vs-measured leaderboard."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from harness import leaderboard, published, results
from harness.errors import ConfigError
from harness.manager import get_plugin_manager
from harness.suites import load_suites, matching_rows, registry_suites
from tests.conftest import FAST

TINY = """
[suite.tiny]
paper = "Liu et al. 2020, Table 1 (two of its rows)"
statistic = "sem"
trials = 10
datasets = ["ring"]
settings = {{ batch_size = 20, dataset_options = {{ size = 2000 }} }}
[suite.tiny.rows]
none = {{ label = "GAN", settings = {{ cond = "none" }} }}
[suite.tiny.rows.kmeans_d]
label = "Self-conditioned"
settings = {{ cond = "kmeans_d", cond_options = {{ k = 8 }} }}
[suite.tiny.profiles.paper]
note = "the paper's budget"
seeds = 10
settings = {{ steps = 100_000 }}
[suite.tiny.profiles.quick]
note = "a test budget"
seeds = {seeds}
settings = {{ steps = {steps}, eval_samples = 500, checkpoint_every = 20 }}
rows.kmeans_d = {{ cond_options = {{ subset = 500, recluster_every = {recluster} }} }}
[suite.tiny.published.ring]
none = {{ modes = [6.3, 0.5], hq_pct = [98.2, 0.2], rkl = [0.45, 0.09] }}
kmeans_d = {{ modes = [8.0, 0.0], hq_pct = [99.5, 0.3], rkl = [0.0014, 0.0002] }}
"""


def tiny_file(tmp_path: Path, seeds: int = 1, steps: int = 20, rows: str = "",
              recluster: int = 10) -> Path:
    path = tmp_path / "suites.toml"
    path.write_text(TINY.format(seeds=seeds, steps=steps, recluster=recluster) + rows)
    return path


def suite_cmd(file: Path, out: Path, *extra: str) -> list[str]:
    return ["suite", "tiny", "--file", str(file), "--out", str(out), "--no-progress", *extra]


def run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob(f"*/{results.RUN}"))


def statuses(out: Path) -> list[str]:
    return sorted(results.read_json(d / results.RUN)["status"] for d in run_dirs(out))


# ----------------------------------------------------------------------------- definitions
def test_every_shipped_suite_is_valid_and_names_installed_plugins():
    pm = get_plugin_manager()
    suites = registry_suites()
    assert {"liu2020-table1", "liu2020-table2", "liu2020-table4", "gmgan-clustering",
            "gmgan-toy", "slcgan-cifar10"} <= set(suites)
    for suite in suites.values():
        for profile in suite.profiles:
            for dataset in suite.profile_datasets(profile):
                pm.get("datasets", dataset)
                for row in suite.rows:
                    values = suite.config_values(profile, dataset, row, 0)
                    for field, family in (("prior", "priors"), ("cond", "conditioners"),
                                          ("backbone", "backbones"), ("loss", "losses")):
                        if field in values:
                            pm.get(family, values[field])
    table1 = suites["liu2020-table1"]
    assert table1.size("paper") == 100 and table1.statistic == "sem" and table1.trials == 10
    assert table1.config_values("paper", "grid", "kmeans_d", 3)["steps"] == 100_000
    assert table1.published_row("ring", "online_kmeans")["modes"][0] == 8
    assert math.isnan(table1.published_row("ring", "online_kmeans")["modes"][1])
    assert suites["liu2020-table2"].paper_dataset("stacked_digits") == "stacked_mnist"


BASE = ('[suite.x]\npaper = "p"\nstatistic = "sem"\ndatasets = ["ring"]\nrows.a = { label = "A" }\n'
        'profiles.quick = { note = "q", seeds = 1 }\nprofiles.paper = { note = "p", seeds = 1 }\n')


@pytest.mark.parametrize(("bad", "message"), [
    ('[suite.x]\npaper = "p"\nstatistic = "sem"\ndatasets = ["ring"]\nrows.a = { label = "A" }\n'
     'profiles.quick = { note = "q", seeds = 1 }\n', "needs profiles paper and quick"),
    ('[suite.x]\npaper = "p"\nstatistic = "se"\ndatasets = ["ring"]\nrows.a = { label = "A" }\n'
     'profiles.quick = { note = "q", seeds = 1 }\nprofiles.paper = { note = "p", seeds = 1 }\n',
     "statistic='se'"),
    ('[suite.x]\npaper = "p"\nstatistic = "sem"\ndatasets = ["ring"]\nrows.a = { label = "A" }\n'
     'profiles.quick = { note = "q", seeds = 1, rows.b = { steps = 1 } }\n'
     'profiles.paper = { note = "p", seeds = 1 }\n', "sets row 'b', which is not a row"),
    ('[suite.x]\npaper = "p"\nstatistic = "sem"\ndatasets = ["ring"]\n'
     'rows.a = { label = "A", settings = { stepz = 3 } }\n'
     'profiles.quick = { note = "q", seeds = 1 }\nprofiles.paper = { note = "p", seeds = 1 }\n',
     "unknown setting(s) stepz"),
    ('[suite.x]\npaper = "p"\nstatistic = "sem"\ndatasets = ["ring"]\nrows.a = { label = "A" }\n'
     'profiles.quick = { note = "q", seeds = 1 }\nprofiles.paper = { note = "p", seeds = 1 }\n'
     'published.ring.b = { modes = 8 }\n', "published numbers for ring/b"),
    *[(BASE + f"published.{cell}\n", message) for cell, message in [
        ("ring.a = { modes = nan }", "Input should be a finite number"),
        ("ring.a = { modes = [6.3, -0.5] }", "a spread cannot be negative"),
        ("ring.a = { modes = [6.3, 0.5, 1] }", "give a mean or [mean, spread]"),
        ("rign.a = { modes = 8 }", "dataset 'rign', which no profile runs"),
    ]],
    (BASE.replace('seeds = 1 }\nprofiles.paper', 'seeds = 1, settings = { stepz = 1 } }\n'
                  'profiles.paper'), "profiles.quick.settings: unknown setting(s) stepz"),
])
def test_malformed_suites_are_one_line_errors(bad, message):
    with pytest.raises(ConfigError, match=None) as caught:
        load_suites(bad)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert "'x'" in str(caught.value)


@pytest.mark.parametrize(("setting", "message"), [
    ('cond = "kmeans_dd"', "unknown conditioner 'kmeans_dd'. Did you mean 'kmeans_d'?"),
    ('backbone = "dcgann"', "unknown backbone 'dcgann'. Did you mean 'dcgan'?"),
    ('dataset_options = { size = -5 }', "size=-5"),
    ('cond = "kmeans_d", cond_options = { k = 0 }', "k=0"),
])
def test_an_unknown_composition_is_refused_before_anything_runs(cli, tmp_path, setting, message):
    rows = f'[suite.tiny.rows.bad]\nlabel = "Bad"\nsettings = {{ {setting} }}\n'
    file = tiny_file(tmp_path, rows=rows)
    result = cli(*suite_cmd(file, tmp_path / "out"))
    assert result.code == 2
    (line,) = result.err.strip().splitlines()[-1:]
    assert line.startswith("error: ") and "ring/bad" in line and message in line, line
    assert "Traceback" not in result.err and run_dirs(tmp_path / "out") == []


def test_the_suites_signal_handler_stops_gently_then_at_once_then_gives_up():
    import signal as signals

    from harness.suite_run import Stopper

    class Engine:
        stops = 0

        def stop(self):
            self.stops += 1

    engine = Engine()
    stopper = Stopper(engine)
    stopper.handle(signals.SIGINT, None)
    stopper.handle(signals.SIGTERM, None)
    assert engine.stops == 2 and stopper.signal == "SIGINT"  # the first one names the stop
    with pytest.raises(KeyboardInterrupt):
        stopper.handle(signals.SIGINT, None)


def test_bad_suite_flags_are_one_line_errors(cli, tmp_path):
    file = tiny_file(tmp_path)
    checks = [
        (["suite", "nope"], "unknown suite 'nope' (valid: liu2020-table1"),
        (["suite"], "needs a NAME"),
        (suite_cmd(file, tmp_path / "o", "--profile", "fast"), "unknown profile 'fast'"),
        (suite_cmd(file, tmp_path / "o", "--executor", "dask"), "unknown executor 'dask'"),
        (suite_cmd(file, tmp_path / "o", "--executor", "pool", "--executor-opt", "thread=2"),
         "unknown option 'thread'"),
        (suite_cmd(file, tmp_path / "o", "--jobs", "2"), "'local' runs at most 1 at a time"),
        (["suite", "tiny", "--file", str(tmp_path)], "cannot read it"),
        (suite_cmd(file, tmp_path / "suites.toml"), "is an existing file"),
    ]
    for args, message in checks:
        result = cli(*args)
        assert result.code == 2, args
        assert message in result.err and result.err.count("\n") == 1, (args, result.err)
    assert not (tmp_path / "o").exists() or run_dirs(tmp_path / "o") == []


def test_list_and_dry_run(cli, tmp_path):
    listing = cli("suite", "--list")
    assert listing.code == 0
    assert "liu2020-table1" in listing.out and "--profile quick: 30 runs" in listing.out
    file = tiny_file(tmp_path, seeds=2)
    dry = cli(*suite_cmd(file, tmp_path / "out", "--dry-run"))
    assert dry.code == 0
    assert "new    ring/kmeans_d/s1" in dry.out
    assert "4 runs: 4 to start, 0 to resume, 0 finished" in dry.out
    assert run_dirs(tmp_path / "out") == []


def test_what_a_suite_does_with_the_runs_already_there(tmp_path):
    from harness.suite_run import Existing, decide

    def run(name, status, started, holder=None):
        return Existing(tmp_path / name, status, started, 10, holder)

    assert decide([]) == ("new", None, "not run yet")
    assert decide([run("a", "failed", "1"), run("b", "finished", "3"), run("c", "finished", "2")
                   ])[:2] == ("skip", tmp_path / "c")  # the earliest finished one counts
    assert decide([run("a", "interrupted", "1"), run("b", "running", "2")])[:2] == (
        "resume", tmp_path / "b")  # a dead process's run, the newest
    assert decide([run("a", "running", "1", holder="process 7")])[0] == "busy"
    action, where, reason = decide([run("a", "failed", "1")])
    assert (action, where) == ("new", None) and "failed" in reason


# ----------------------------------------------------------------------------- running
def check_board(out: Path, n_runs: int) -> None:
    assert statuses(out) == ["finished"] * n_runs
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(comparison["method"]) == {"GAN", "Self-conditioned"}
    assert set(comparison["metric"]) == {"modes", "hq_pct", "rkl"}
    rkl = comparison[(comparison["metric"] == "rkl") & (comparison["row"] == "none")].iloc[0]
    assert rkl["better"] == "lower" and rkl["published_mean"] == 0.45
    assert rkl["difference"] == pytest.approx(rkl["measured_mean"] - 0.45)
    assert rkl["budget"] == "20 of 100k steps"
    assert "| Self-conditioned " in (out / "leaderboard.md").read_text()


def test_a_suite_through_local_then_again_skips_everything(cli, tmp_path):
    file, out = tiny_file(tmp_path), tmp_path / "out"
    first = cli(*suite_cmd(file, out))
    assert first.code == 0, first.err
    check_board(out, 2)
    assert "tiny: Liu et al. 2020, Table 1 (two of its rows)" in first.out
    again = cli(*suite_cmd(file, out))
    assert again.code == 0 and len(run_dirs(out)) == 2
    assert "run(s) finished in" not in again.err  # nothing to run: both finished


def test_a_suite_through_a_process_pool(cli, tmp_path):
    file, out = tiny_file(tmp_path), tmp_path / "out"
    result = cli(*suite_cmd(file, out, "--executor", "pool", "--jobs", "2"))
    assert result.code == 0, result.err
    check_board(out, 2)
    threads = {results.read_json(d / results.CONFIG)["config"]["threads"] for d in run_dirs(out)}
    assert threads == {max(1, len(os.sched_getaffinity(0)) // 2)}
    assert sorted(p.name for p in (out / ".suite-logs").iterdir()) == [
        "ring-kmeans_d-s0.log", "ring-none-s0.log"]


@pytest.mark.parametrize("engine", [
    ["--executor", "ray", "--executor-opt", "num_cpus=2"],
    ["--executor", "submitit", "--executor-opt", "cluster=local"],
])
def test_a_suite_through_ray_and_submitit(cli, tmp_path, engine):
    file, out = tiny_file(tmp_path), tmp_path / "out"
    result = cli(*suite_cmd(file, out, *engine))
    assert result.code == 0, result.err
    check_board(out, 2)


def test_a_killed_suite_finishes_only_the_missing_runs(tmp_path):
    """SIGTERM to ``harness suite`` mid-run: the running run checkpoints and is marked
    interrupted; the same command then resumes it and starts only what never ran."""
    file, out = tiny_file(tmp_path, seeds=2, steps=400, recluster=200), tmp_path / "out"
    cmd = [sys.executable, "-m", "harness.cli", *suite_cmd(file, out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # kill once a run finished and the next checkpointed
        found = [(d, results.read_json(d / results.RUN)["status"]) for d in run_dirs(out)]
        if "finished" in dict(found).values() and any(
                status == "running" and (d / results.CHECKPOINT).exists() for d, status in found):
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    else:
        pytest.fail(f"the suite never reached its second run: {statuses(out)}")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "run the same command again" in err
    before = {d.name: results.read_json(d / results.RUN)["status"] for d in run_dirs(out)}
    assert "interrupted" in before.values() and len(before) < 4

    again = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, timeout=120)
    plan = again.stdout
    assert f"{sum(s == 'finished' for s in before.values())} finished" in plan, (before, plan)
    assert "1 to resume" in plan, (before, plan, err)

    final = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    after = {d.name: results.read_json(d / results.RUN) for d in run_dirs(out)}
    assert len(after) == 4 and all(info["status"] == "finished" for info in after.values())
    resumed = [name for name, status in before.items() if status == "interrupted"]
    assert all(after[name].get("resumes") for name in resumed)  # continued, not restarted
    assert len(pd.read_csv(out / "comparison.csv")) == 6


# ----------------------------------------------------------------------------- leaderboard
def hand_made_runs(cli, tmp_path: Path, modes: list[float], paper: bool = True) -> Path:
    """One real GAN run on the ring, copied once per value of ``modes`` as seeds 0.. with
    that value written into metrics.json by hand; with ``paper``, its config.json says it
    followed Table 1's protocol (100k steps, 50k samples, 100k points)."""
    source = tmp_path / "source"
    assert cli("run", *FAST, "--cond", "none", "--out", source).code == 0
    (template,) = run_dirs(source)
    out = tmp_path / "runs"
    for seed, value in enumerate(modes):
        target = out / f"run-{seed}"
        shutil.copytree(template, target, ignore=shutil.ignore_patterns("checkpoints"))
        saved = results.read_json(target / results.CONFIG)
        saved["config"]["seed"] = seed
        if paper:
            saved["config"].update(steps=100_000, eval_samples=50_000)
            saved["config"]["dataset_options"]["size"] = 100_000
            saved["resolved"]["dataset"]["options"]["size"] = 100_000
        results.atomic_write_json(target / results.CONFIG, saved)
        metrics = {"modes": value, "hq_pct": 50.0, "rkl": 0.5, "kid_x_10k": 0.1 * (seed + 1),
                   "kid_x_10k_std": 0.3, "eval_samples": 2000}
        results.atomic_write_json(target / results.METRICS, metrics)
    return out


def test_published_measured_and_difference_on_hand_made_runs(cli, tmp_path):
    out = hand_made_runs(cli, tmp_path, [5.0, 6.0, 7.0])
    result = cli("leaderboard", out, "--compare", "liu2020-table1", "--csv",
                 tmp_path / "board.csv", "--markdown", tmp_path / "board.md")
    assert result.code == 0, result.err
    line = next(row for row in result.out.splitlines() if " modes " in row and "GAN" in row)
    # mean 6 ± s.e. 1/sqrt(3) = 0.58 (the paper's statistic), paper 6.3 ± 0.5 over 10 trials:
    # Welch's t-test cannot tell them apart
    assert "6 ± 0.58" in line and "6.3 ± 0.5" in line and "-0.3" in line
    assert line.rstrip().endswith("consistent") and "[5, 7]" in line
    hq = next(row for row in result.out.splitlines() if " hq_pct " in row and "GAN" in row)
    assert hq.rstrip().endswith("worse") and "-48.2" in hq
    rkl = next(row for row in result.out.splitlines() if " rkl " in row and "GAN" in row)
    assert rkl.rstrip().endswith("consistent")  # 0.5 against 0.45 ± 0.09 (s.e.)
    board = pd.read_csv(tmp_path / "board.csv")
    assert board.loc[0, "modes_mean"] == 6 and board.loc[0, "modes_sem"] == pytest.approx(
        1 / math.sqrt(3))
    # a run's own spread (KID's std over subsets) is pooled, never averaged as a metric
    assert "kid_x_10k_std_mean" not in board
    assert board.loc[0, "kid_x_10k_run_std"] == pytest.approx(0.3)
    assert board.loc[0, "kid_x_10k_std"] == pytest.approx(0.1)  # over seeds, of KID itself
    markdown = (tmp_path / "board.md").read_text()
    assert "| method " in markdown and "0.45 ± 0.09" in markdown


def test_welch_p_values_against_the_published_statistics(cli, tmp_path):
    out = hand_made_runs(cli, tmp_path, [5.0, 6.0, 7.0])
    result = cli("leaderboard", out, "--compare", "liu2020-table1", "--csv", tmp_path / "b.csv")
    assert result.code == 0, result.err
    frame, metrics = leaderboard.load_runs([out])
    comparison = published.compare(frame, metrics, [registry_suites()["liu2020-table1"]],
                                   {"modes": "higher", "hq_pct": "higher", "rkl": "lower"})
    modes = comparison[comparison["metric"] == "modes"].iloc[0]
    # the paper's s.e. 0.5 over 10 trials is a std of 0.5 * sqrt(10)
    expected = stats.ttest_ind_from_stats(6.0, 1.0, 3, 6.3, 0.5 * math.sqrt(10), 10,
                                          equal_var=False).pvalue
    assert modes["p_value"] == pytest.approx(expected) and modes["verdict"] == "consistent"
    assert (modes["ci95_low"], modes["ci95_high"]) == (5.0, 7.0)


def test_no_verdict_below_the_budget_with_other_settings_or_few_seeds(cli, tmp_path):
    short = hand_made_runs(cli, tmp_path / "short", [5.0, 6.0, 7.0], paper=False)
    result = cli("leaderboard", short, "--compare", "liu2020-table1")
    line = next(row for row in result.out.splitlines() if " modes " in row and "GAN" in row)
    assert line.rstrip().endswith("n/a: 30 of 100k steps; settings differ: eval_samples=2000, "
                                  "dataset.size=2000")
    two = hand_made_runs(cli, tmp_path / "two", [5.0, 6.0])
    result = cli("leaderboard", two, "--compare", "liu2020-table1")
    line = next(row for row in result.out.splitlines() if " modes " in row and "GAN" in row)
    assert line.rstrip().endswith("too few seeds (2 of 3)")


def test_the_quickstart_run_shows_the_papers_row_and_budget(cli, tmp_path):
    result = cli("run", *FAST, "--out", tmp_path)
    assert result.code == 0
    assert "liu2020-table1: Liu et al. 2020" in result.out
    line = next(row for row in result.out.splitlines() if " hq_pct " in row and "Self" in row)
    assert "Self-conditioned (k=50)" in line and "30 of 100k steps" in line
    assert "99.5 ± 0.3" in line


def test_runs_match_a_row_by_its_components_and_own_settings():
    suite = registry_suites()["liu2020-table1"]
    base = {"dataset": "ring", "prior": "gaussian", "backbone": "mlp", "loss": "bce"}
    assert [m.row for m in matching_rows({**base, "cond": "kmeans_d", "cond.k": 50}, [suite])] \
        == ["kmeans_d"]
    assert list(matching_rows({**base, "cond": "kmeans_d", "cond.k": 10}, [suite])) == []
    assert list(matching_rows({**base, "cond": "none", "backbone": "dcgan"}, [suite])) == []
    assert list(matching_rows({**base, "dataset": "digits", "cond": "none"}, [suite])) == []


def test_inception_weights_are_grouped_by_content_not_path(tmp_path):
    from harness_plugins.metrics.fidelity import InceptionFidelity, file_sha256

    weights = tmp_path / "a" / "w.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"not really weights")
    metric = InceptionFidelity.__new__(InceptionFidelity)
    metric.options = InceptionFidelity.Options(weights=weights)
    recorded = metric.resolved()
    assert recorded["weights"] == f"sha256:{file_sha256(weights)}"
    assert str(tmp_path) not in json.dumps(recorded)


def test_within_run_spreads_are_not_metrics():
    frame = pd.DataFrame({"dataset": ["ring"] * 2, "seed": [0, 1], "run_id": ["a", "b"],
                          "status": "finished", "kid": [0.1, 0.3], "kid_std": [0.3, 0.4]})
    table = leaderboard.aggregate(frame, ["kid", "kid_std"])
    assert table.loc[0, "kid_run_std"] == pytest.approx(math.sqrt((0.09 + 0.16) / 2))
    assert "kid_std_mean" not in table
    assert "kid_std" not in leaderboard.render(table, ["kid", "kid_std"]).splitlines()[0].split()


def test_a_rows_new_seeds_train_together_as_one_job(cli, tmp_path):
    file, out = tiny_file(tmp_path, seeds=3), tmp_path / "out"
    planned = cli(*suite_cmd(file, out, "--vectorise", "yes", "--dry-run"))
    assert "together ring/none: seeds 0-2 as one vectorised job" in planned.out
    assert "together ring/kmeans_d: seeds 0-2" in planned.out and not out.exists()
    result = cli(*suite_cmd(file, out, "--executor", "pool", "--jobs", "2",
                            "--vectorise", "yes"))
    assert result.code == 0, result.err
    check_board(out, 6)
    assert sorted(p.name for p in (out / ".suite-logs").iterdir()) == [
        "ring-kmeans_d-s0-2.log", "ring-none-s0-2.log"]
    infos = [results.read_json(d / results.RUN) for d in run_dirs(out)]
    assert [i["status"] for i in infos] == ["finished"] * 6
    assert {i["timings"]["replicas"] for i in infos} == {3}
    assert "6 finished of 6 run(s)" in result.err
    # a finished seed is skipped; the row's other new seeds still train together
    victims = [d for d in run_dirs(out)
               if results.read_json(d / results.CONFIG)["config"]["seed"] != 0]
    for d in victims:
        shutil.rmtree(d)
    shutil.rmtree(out / ".suite-logs")
    again = cli(*suite_cmd(file, out, "--vectorise", "yes"))
    assert again.code == 0, again.err
    assert sorted(p.name for p in (out / ".suite-logs").iterdir()) == [
        "ring-kmeans_d-s1-2.log", "ring-none-s1-2.log"]


def test_on_the_cpu_auto_keeps_one_run_per_job(pm, tmp_path):
    from harness.suite_run import check_compositions, make_jobs, plan

    suite = load_suites(tiny_file(tmp_path, seeds=2).read_text())["tiny"]
    jobs = plan(suite, "quick", 2, lambda d, r, s: {
        **suite.config_values("quick", d, r, s), "out": str(tmp_path / "out")}, tmp_path / "out")
    assert check_compositions(jobs, pm, "auto") == set()  # no CUDA here
    assert [j.run_keys() for j in make_jobs(jobs, tmp_path, {}, set())] == [
        ["ring/none/s0"], ["ring/none/s1"], ["ring/kmeans_d/s0"], ["ring/kmeans_d/s1"]]
    together = check_compositions(jobs, pm, "yes")
    assert len(together) == 2
    assert [j.run_keys() for j in make_jobs(jobs, tmp_path, {}, together)] == [
        ["ring/none/s0", "ring/none/s1"], ["ring/kmeans_d/s0", "ring/kmeans_d/s1"]]


def test_suite_seeds_given_twice_or_in_other_digits_are_refused(cli, tmp_path):
    file, out = tiny_file(tmp_path), tmp_path / "out"
    for extra, message in [(["--seeds", "3", "--seeds", "4"], "--seeds is given twice"),
                           (["--seeds", "\u0663"], "is not a whole number")]:
        result = cli(*suite_cmd(file, out, "--dry-run", *extra))
        assert result.code == 2 and message in result.err and not out.exists()

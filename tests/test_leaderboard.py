"""The leaderboard counts distinct seeds and skips, with a warning, every run it cannot use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import leaderboard
from harness.cli import main
from harness.config import RunConfig

RESOLVED = {
    "backbone": {"name": "mlp", "options": {"g_width": 400}, "provider": "backbones"},
    "cond": {"name": "kmeans_d", "options": {"k": 5, "subset": 200}, "provider": "conditioners"},
    "dataset": {"name": "ring", "options": {"modes": 8, "size": 500}, "provider": "datasets"},
    "loss": {"name": "bce", "options": {}, "provider": "losses"},
    "metrics": {"modes_2d": {"tolerance": 3.0}},
    "prior": {"name": "gaussian", "options": {}, "provider": "priors"},
    "z_dim": 2,
}
METRICS = {"modes": 8, "hq_pct": 90.0, "rkl": 0.05, "eval_samples": 200}


def make_run(
    root: Path,
    name: str,
    seed: int = 0,
    status: str = "finished",
    started: str = "2026-01-01T12:00:00+0000",
    metrics: dict[str, Any] | None = None,
    **config: Any,
) -> Path:
    """A run directory as ``trainer.execute`` writes it (``environment`` left out)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    values = RunConfig(**{"seed": seed, "steps": 5, "eval_samples": 200, **config})
    values = values.model_dump(mode="json")
    (run_dir / "config.json").write_text(json.dumps({"config": values, "resolved": RESOLVED}))
    info = {"run_id": name, "seed": seed, "status": status, "started": started}
    (run_dir / "run.json").write_text(json.dumps(info))
    if status == "finished":
        (run_dir / "metrics.json").write_text(json.dumps(metrics or METRICS))
    return run_dir


def load(*paths: Path) -> tuple[Any, list[str], list[str]]:
    """The frame, its metric names and the warnings of ``load_runs``."""
    warnings: list[str] = []
    frame, metrics = leaderboard.load_runs(paths, warn=warnings.append)
    return frame, metrics, warnings


def test_a_rerun_with_the_same_seed_is_counted_once(tmp_path):
    make_run(tmp_path, "20260101-120500-a-s0", metrics={**METRICS, "rkl": 1.0})
    make_run(tmp_path, "20260101-120000-b-s0", started="2026-01-01T12:05:00+0000",
             metrics={**METRICS, "rkl": 3.0})  # earlier name, later start: a duplicate
    make_run(tmp_path, "20260101-130000-c-s1", seed=1, started="2026-01-01T13:00:00+0000",
             metrics={**METRICS, "rkl": 2.0})
    frame, metrics, warnings = load(tmp_path)
    assert sorted(frame["run_id"]) == ["20260101-120500-a-s0", "20260101-130000-c-s1"]
    assert warnings == [f"{tmp_path / '20260101-120000-b-s0'}: duplicate of 20260101-120500-a-s0 "
                        "(same composition and seed 0); not counted"]
    table = leaderboard.aggregate(frame, metrics)
    assert table["n_seeds"].tolist() == [2] and table["rkl_mean"].tolist() == [1.5]
    header, row = leaderboard.render(table, metrics).splitlines()
    assert header.split()[4] == "seeds" and row.split()[4] == "2"


def test_duplicates_with_the_same_start_keep_the_first_run_id(tmp_path):
    for name in ("20260101-120000-b", "20260101-120000-a", "20260101-120000-c"):
        make_run(tmp_path, name)
    frame, _, warnings = load(tmp_path)
    assert frame["run_id"].tolist() == ["20260101-120000-a"]
    assert [w.split(": ")[1] for w in warnings] == ["duplicate of 20260101-120000-a (same "
                                                    "composition and seed 0); not counted"] * 2


def test_the_same_directory_given_twice_is_one_run(tmp_path):
    run_dir = make_run(tmp_path, "20260101-120000-a")
    frame, _, warnings = load(tmp_path, run_dir, tmp_path)
    assert len(frame) == 1 and warnings == []


def test_runs_differing_in_any_config_field_are_different_compositions(tmp_path):
    make_run(tmp_path, "a")
    make_run(tmp_path, "b", eval_samples=400, metrics={**METRICS, "eval_samples": 400})
    make_run(tmp_path, "c", lr_g=2e-4)
    frame, metrics, warnings = load(tmp_path)
    assert warnings == [] and "eval_samples" not in metrics
    table = leaderboard.aggregate(frame, metrics)
    assert table["n_seeds"].tolist() == [1, 1, 1]
    assert "eval_samples" in leaderboard.render(table, metrics).splitlines()[0]


def test_unfinished_runs_are_summed_up_in_one_line(tmp_path):
    make_run(tmp_path, "done")
    for name, status in [("r1", "running"), ("r2", "running"), ("f", "failed"),
                         ("i", "interrupted")]:
        make_run(tmp_path, name, status=status)
    (tmp_path / "notes").mkdir()  # not a run: ignored
    frame, _, warnings = load(tmp_path)
    assert frame["run_id"].tolist() == ["done"]
    assert warnings == ["skipped 4 unfinished runs: 1 failed, 1 interrupted, 2 running"]


def _write(name: str, content: str | bytes) -> Any:
    def damage(run_dir: Path) -> None:
        path = run_dir / name
        path.unlink(missing_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return damage


def _config(change: Any) -> Any:
    def damage(run_dir: Path) -> None:
        saved = json.loads((run_dir / "config.json").read_text())
        change(saved)
        (run_dir / "config.json").write_text(json.dumps(saved))
    return damage


def _remove(name: str) -> Any:
    return lambda run_dir: (run_dir / name).unlink()


NOT_FINITE = "metrics.json has values that are not finite numbers: "
DAMAGE = {
    "empty run.json": (_write("run.json", ""), "run.json is not valid JSON (Expecting value"),
    "run.json list": (_write("run.json", "[1, 2]"), "run.json holds a JSON array, not an object"),
    "run.json status": (_write("run.json", '{"status": [1]}'),
                        "run.json has no status (found [1])"),
    "run.json folder": (lambda d: ((d / "run.json").unlink(), (d / "run.json").mkdir()),
                        "cannot read run.json: Is a directory"),
    "config.json missing": (_remove("config.json"), "config.json is missing"),
    "config.json truncated": (_write("config.json", '{"config": {'),
                              "config.json is not valid JSON"),
    "config.json number": (_write("config.json", "3"), "config.json holds a JSON number, not an"),
    "config.json no config": (_config(lambda s: s.pop("config")), 'config.json has no "config"'),
    "config.json invalid": (_config(lambda s: s["config"].update(steps=-5)),
                            "config.json: invalid run config: steps=-5"),
    "config.json unknown field": (_config(lambda s: s["config"].update(colour=1)),
                                  "config.json: invalid run config: unknown option 'colour'"),
    "config.json no resolved": (_config(lambda s: s.pop("resolved")),
                                'config.json has no "resolved" object'),
    "config.json no options": (_config(lambda s: s["resolved"]["prior"].pop("options")),
                               "config.json has no resolved options for prior"),
    "config.json options list": (_config(lambda s: s["resolved"].update(cond={"options": []})),
                                 "config.json has no resolved options for cond"),
    "config.json metric options": (_config(lambda s: s["resolved"].update(metrics={"m": 1})),
                                   "config.json: resolved metric options are not objects"),
    "metrics.json missing": (_remove("metrics.json"), "metrics.json is missing"),
    "metrics.json empty": (_write("metrics.json", ""), "metrics.json is not valid JSON"),
    "metrics.json binary": (_write("metrics.json", b"\xff\xfe{"), "metrics.json is not valid JSON"),
    "metrics.json deep": (_write("metrics.json", "[" * 100_000),
                          "metrics.json is nested too deeply"),
    "metrics.json list": (_write("metrics.json", "[]"), "metrics.json holds a JSON array"),
    "metrics.json NaN": (_write("metrics.json", '{"rkl": NaN, "modes": 3}'),
                         NOT_FINITE + "rkl=nan"),
    "metrics.json inf": (_write("metrics.json", '{"rkl": 1e999, "modes": -Infinity}'),
                         NOT_FINITE + "rkl=inf, modes=-inf"),
    "metrics.json huge int": (_write("metrics.json", '{"rkl": 1' + "0" * 400 + "}"),
                              NOT_FINITE + "rkl=100000000000000000...0000000000000000000"),
    "metrics.json string": (_write("metrics.json", '{"rkl": "0.5"}'),
                            NOT_FINITE + "rkl='0.5'"),
    "metrics.json bool": (_write("metrics.json", '{"modes": true}'),
                          NOT_FINITE + "modes=True"),
    "metrics.json null": (_write("metrics.json", '{"modes": null}'),
                          NOT_FINITE + "modes=None"),
    "metrics.json nested": (_write("metrics.json", '{"modes": {"a": [1]}}'),
                            NOT_FINITE + "modes={'a': [1]}"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_an_unusable_run_is_skipped_with_a_reason(tmp_path, case):
    damage, reason = DAMAGE[case]
    make_run(tmp_path, "good", metrics={**METRICS, "rkl": 0.5})
    damage(make_run(tmp_path, "bad", seed=1, metrics={**METRICS, "rkl": 9.0}))
    frame, metrics, warnings = load(tmp_path)
    assert frame["run_id"].tolist() == ["good"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{tmp_path / 'bad'}: {reason}"), warnings[0]
    assert warnings[0].endswith("; skipped") and "\n" not in warnings[0]
    table = leaderboard.aggregate(frame, metrics)
    assert table["n_seeds"].tolist() == [1] and table["rkl_mean"].tolist() == [0.5]


def test_the_command_prints_the_table_and_one_warning_line_each(tmp_path, capsys):
    make_run(tmp_path, "20260101-120000-a")
    make_run(tmp_path, "20260101-120100-a", started="2026-01-01T12:01:00+0000")
    make_run(tmp_path, "20260101-120200-a", status="running")
    (make_run(tmp_path, "20260101-120300-b", seed=1) / "metrics.json").write_text("[]")
    assert main(["leaderboard", str(tmp_path), "--csv", str(tmp_path / "board.csv")]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split()[:5] == ["ring", "kmeans_d", "gaussian", "mlp", "1"]
    assert err.splitlines()[:3] == [
        f"warning: {tmp_path / '20260101-120300-b'}: metrics.json holds a JSON array, not an "
        "object; skipped",
        "warning: skipped 1 unfinished run: 1 running",
        f"warning: {tmp_path / '20260101-120100-a'}: duplicate of 20260101-120000-a (same "
        "composition and seed 0); not counted",
    ]
    assert "n_seeds" in (tmp_path / "board.csv").read_text().splitlines()[0]


def test_nothing_usable_still_prints_a_table(tmp_path, capsys):
    (make_run(tmp_path, "a") / "config.json").write_text("")
    assert main(["leaderboard", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "(no finished runs)" and err.count("warning: ") == 1


def test_one_seed_shows_no_std_and_a_missing_metric_shows_nothing():
    from harness.leaderboard import mean_std

    assert mean_std(1.5, float("nan")) == "1.5"
    assert mean_std(1.5, 0.25) == "1.5 ± 0.25"
    assert mean_std(float("nan"), float("nan")) == ""


def test_a_run_without_metric_values_is_skipped(tmp_path):
    run_dir = make_run(tmp_path, "20260101-120000-a-s0")
    (run_dir / "metrics.json").write_text('{"eval_samples": 200}')
    frame, _, warnings = load(tmp_path)
    assert frame.empty and warnings == [f"{run_dir}: metrics.json holds no metric values; skipped"]


def _leaderboard(*args: str | Path) -> int:
    return main(["leaderboard", *map(str, args)])


@pytest.mark.parametrize(("flag", "where", "message"), [
    ("--csv", "runs/run/run.json", "it is inside the run directory {run}, whose files must not be "
                              "replaced (valid: a path outside every run directory)"),
    ("--csv", "runs/run/metrics.json", "it is inside the run directory {run}"),
    ("--csv", "runs/run/checkpoints/board.csv", "it is inside the run directory {run}"),
    ("--markdown", "runs/run/board.md", "it is inside the run directory {run}"),
    ("--csv", "link/board.csv", "it is inside the run directory"),  # a link to the run
    ("--csv", "notes.txt", "the existing file {tmp}/notes.txt is not a leaderboard CSV that "
                           "--csv wrote"),
    ("--csv", "comparison.csv", "the existing file {tmp}/comparison.csv is not a leaderboard"),
    ("--markdown", "notes.txt", "the existing file {tmp}/notes.txt is not a leaderboard that "
                                "--markdown wrote"),
    ("--markdown", "board.csv", "the existing file {tmp}/board.csv is not a leaderboard"),
])
def test_an_export_never_replaces_a_run_file_or_a_foreign_file(tmp_path, capsys, flag, where,
                                                                message):
    run = make_run(tmp_path / "runs", "run")
    (tmp_path / "link").symlink_to(run)
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "comparison.csv").write_text("suite,source\nliu,x\n")
    assert _leaderboard(tmp_path / "runs", "--csv", tmp_path / "board.csv") == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert _leaderboard(tmp_path / "runs", flag, tmp_path / where) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1  # refused before the table is built
    assert err.startswith(f"error: {flag} {tmp_path / where}: cannot write the table: ")
    assert message.format(run=run, tmp=tmp_path) in err
    if "existing" in message:
        assert f"(valid: another {flag} path, or delete the file first)" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_an_export_replaces_its_own_earlier_file(tmp_path, capsys):
    make_run(tmp_path / "runs", "a")
    make_run(tmp_path / "runs", "b", seed=1, metrics={**METRICS, "rkl": 0.25})
    board, md = tmp_path / "board.csv", tmp_path / "board.md"
    (tmp_path / "no-runs").mkdir()
    assert _leaderboard(tmp_path / "no-runs", "--csv", board, "--markdown", md) == 0
    assert board.read_text().strip() == md.read_text().strip() == ""  # an empty leaderboard
    for group_by in ([], ["--group-by", "dataset"], []):
        assert _leaderboard(tmp_path / "runs", "--csv", board, "--markdown", md, *group_by) == 0
        header = board.read_text().splitlines()[0]
        assert header.startswith("dataset,n_seeds,modes_mean" if group_by else "augment,")
        assert md.read_text().startswith("| augment" if not group_by else "| dataset")
    assert "wrote" in capsys.readouterr().err
    for _ in range(2):  # names without .csv / .md are recognised by their contents too
        assert _leaderboard(tmp_path / "runs", "--csv", tmp_path / "t2.txt", "--markdown",
                            tmp_path / "t1.txt") == 0
    assert _leaderboard(tmp_path / "runs", "--csv", board, "--markdown", board) == 2
    assert "name the same file" in capsys.readouterr().err
    assert board.read_text().startswith("augment,")


def test_per_class_columns_sort_as_numbers(tmp_path, capsys):
    per_class = {f"intra_fid_digits_30_c{c}": float(c) for c in (0, 1, 10, 11, 2, 3, 9)}
    metrics = {**METRICS, **per_class, "intra_fid_digits_30_classes": 5.0, "zeta": 1.0}
    make_run(tmp_path, "a", metrics=dict(sorted(metrics.items())))  # as metrics.json has them
    _, names, _ = load(tmp_path)
    assert names == ["hq_pct", *(f"intra_fid_digits_30_c{c}" for c in (0, 1, 2, 3, 9, 10, 11)),
                     "intra_fid_digits_30_classes", "modes", "rkl", "zeta"]
    assert leaderboard.natural_order(["fid_10k", "kid_10k", "fid_2k", "a@step10", "a@step9",
                                      "fid_10k"]) == ["fid_2k", "fid_10k", "kid_10k",
                                                      "a@step9", "a@step10"]
    assert _leaderboard(tmp_path, "--csv", tmp_path / "board.csv") == 0
    header = (tmp_path / "board.csv").read_text().splitlines()[0].split(",")
    means = [c.removesuffix("_mean") for c in header if c.endswith("_mean")]
    assert means == names
    assert capsys.readouterr().out.splitlines()[0].split()[-4:] == [
        "intra_fid_digits_30_classes", "modes", "rkl", "zeta"]


@pytest.mark.filterwarnings("error::pandas.errors.PerformanceWarning")
def test_a_wide_table_is_built_at_once(tmp_path, capsys):
    metrics = {**METRICS, **{f"intra_fid_digits_30_c{c}": float(c) for c in range(150)},
               **{f"kid_{c}": 1.0 for c in range(60)}, **{f"kid_{c}_std": 0.5 for c in range(60)}}
    for seed in range(2):
        make_run(tmp_path, f"s{seed}", seed=seed, metrics=metrics)
    make_run(tmp_path, "other", lr_g=1e-3, metrics=metrics)
    assert _leaderboard(tmp_path, "--csv", tmp_path / "b.csv", "--markdown", tmp_path / "b.md") \
        == 0
    out, err = capsys.readouterr()
    assert "Warning" not in err and len(out.splitlines()) == 3
    frame, names, _ = load(tmp_path)
    frame.loc[frame["run_id"] == "other", "lr_g"] = None  # a group whose key is missing
    table = leaderboard.aggregate(frame, names)
    assert table["n_seeds"].tolist() == [2, 1]
    assert table["kid_7_run_std"].tolist() == [0.5, 0.5]
    keys = [c for c in frame.columns if c not in names and c not in leaderboard.RUN_COLUMNS]
    assert list(table.columns[:len(keys) + 1]) == [*keys, "n_seeds"]
    assert table["lr_g"].isna().tolist() == [False, True]

"""``harness report``: one static HTML page of a results folder, opened in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import report
from harness.cli import main
from harness.report import PNG_SIGNATURE
from tests.browser import Browser, file_url, find_chromium
from tests.test_leaderboard import METRICS, make_run

RING = ["run", "--dataset-opt", "size=1000", "--eval-samples", "300", "--steps", "10",
        "--batch-size", "32", "--log-every", "5", "--no-progress", "--threads", "1"]
IMAGES = ["run", "--dataset", "digits", "--cond", "kmeans_d", "--cond-opt", "k=5",
          "--cond-opt", "subset=200", "--backbone", "dcgan", "--backbone-opt", "width=8",
          "--z-dim", "16", "--steps", "4", "--batch-size", "16", "--log-every", "2",
          "--eval-samples", "200", "--metrics", "cluster_agreement", "--no-progress",
          "--threads", "1"]
CHECK = """({
  tables: [...document.querySelectorAll('table')].map(t => t.tBodies[0]?.rows.length ?? 0),
  board: document.getElementById('leaderboard')?.tBodies[0].rows.length ?? 0,
  images: [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0})),
  links: [...document.querySelectorAll('nav a')].map(a => !!document.querySelector(
      '#' + CSS.escape(a.hash.slice(1)))),
})"""
"""What the browser rendered: body rows per table, leaderboard rows, images loaded, links."""


def harness(*args: str | Path) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real runs: the ring with random labels (Liu et al.'s Table 1 row) at two seeds,
    one of them with harness tradeoff; the ring with a mixture prior and harness cluster;
    digits, for a grid of images."""
    out = tmp_path_factory.mktemp("results")
    assert harness(*RING, "--cond", "random", "--seeds", "0-1", "--out", out) == 0
    ring = sorted(out.glob("*-s0-*"))[0]
    assert harness("tradeoff", ring, "--scales", "0.5,1", "--eval-samples", "300") == 0
    assert harness(*RING, "--prior", "gmm", "--cond", "random", "--out", out) == 0
    mixture = next(out.glob("*-gmm-*"))
    assert harness("cluster", mixture, "--samples-per-component", "50", "--subset", "300") == 0
    assert harness(*IMAGES, "--out", out) == 0
    return out


@pytest.fixture
def copy(results_dir: Path, tmp_path: Path) -> Path:
    """A copy of the results folder (without checkpoints) that a test may change."""
    target = tmp_path / "results"
    shutil.copytree(results_dir, target, ignore=shutil.ignore_patterns("checkpoints"))
    return target


def write_report(cli, results: Path, out: Path, *flags: str) -> str:
    result = cli("report", results, "--out", out, *flags)
    assert result.code == 0, result.err
    return out.read_text(encoding="utf-8")


@pytest.mark.skipif(find_chromium() is None,
                    reason="no Chromium on PATH (apt-get install chromium; .ci/run installs it)")
def test_report_renders_in_headless_chromium(cli, results_dir, tmp_path):
    out = tmp_path / "report.html"
    text = write_report(cli, results_dir, out)
    broken = tmp_path / "broken.html"  # the checks' control: what they must catch
    broken.write_text(report.page("control", '<table><tr><td>1</td></tr></table>'
                                         '<img src="missing.png" alt="x"><script>1</script>'))
    with Browser(find_chromium()) as browser:
        control = browser.open(file_url(broken), CHECK)
        page = browser.open(file_url(out), CHECK)
    assert len(control.errors) == 2 and all("Content Security Policy" in e
                                            for e in control.errors), control.errors
    assert control.value["images"] == [{"alt": "x", "ok": False}]
    assert page.errors == []
    rendered = page.value
    assert rendered["board"] == 3  # ring (2 seeds), ring with the mixture prior, digits
    assert all(rows > 0 for rows in rendered["tables"]), rendered["tables"]
    alts = [image["alt"] for image in rendered["images"]]
    assert [image for image in rendered["images"] if not image["ok"]] == []
    assert sum(alt.startswith("samples at step") for alt in alts) == 4  # one grid per run
    assert sum(alt.startswith("training curves") for alt in alts) == 4
    for caption in ("quality against diversity", "cluster quality", "cluster sizes (cluster.json)",
                    "quality–diversity trade-off over the sampling scale σ (tradeoff.png)"):
        assert caption in alts
    assert rendered["links"] == [True] * 4
    assert page.screenshot.startswith(PNG_SIGNATURE) and len(page.screenshot) > 10_000
    assert "Random labels (k=50)" in text  # the published row beside the measured one


def test_report_is_self_contained_and_escapes_run_data(cli, copy, tmp_path):
    ring = sorted(copy.glob("*-s1-*"))[0]
    hostile = ring.rename(ring.parent / 'x<b>&"y')
    (hostile / "curves.png").unlink()  # drawn from log.jsonl instead
    result = cli("report", copy)  # --out defaults to RESULTS_DIR/report.html
    assert result.code == 0, result.err
    text = (copy / "report.html").read_text(encoding="utf-8")
    assert "x&lt;b&gt;&amp;&quot;y" in text and "<b>" not in text
    assert re.findall(r'<img src="(?!data:image/png;base64,)', text) == []
    assert not re.search(r"(src|href)=\"(?!data:|#)", text)  # nothing fetched, no script
    assert "<script" not in text
    assert "training curves (drawn from log.jsonl)" in text
    rows = re.findall(r'leaderboard row <a href="#board">#(\d+)</a>', text)
    assert len(rows) == 4 and len(set(rows)) == 3  # the two ring seeds share their row


def test_report_names_what_it_cannot_read(cli, copy, tmp_path):
    ring0, ring1 = sorted(copy.glob("*-gaussian-random-mlp-ring-*"))
    (ring0 / "curves.png").write_bytes(b"not a png")
    info = json.loads((ring1 / "run.json").read_text())
    (ring1 / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    result = cli("report", copy, "--out", tmp_path / "report.html")
    assert result.code == 0 and "skipped 1 unfinished run: 1 interrupted" in result.err
    text = (tmp_path / "report.html").read_text()
    assert "curves.png is not a PNG image" in text
    assert 'class="status-interrupted">interrupted' in text
    assert "skipped 1 unfinished run: 1 interrupted" in text


def test_report_uses_a_suites_comparison(cli, copy, tmp_path):
    (copy / "comparison.csv").write_text("suite,source\nbroken,x\n")
    result = cli("report", copy, "--out", tmp_path / "a.html")
    assert result.code == 0 and "lacks the columns" in result.err
    assert "Random labels (k=50)" in (tmp_path / "a.html").read_text()  # every shipped suite
    from harness import leaderboard, published, suites
    from harness.manager import get_plugin_manager

    frame, metrics = leaderboard.load_runs([copy])
    suite = suites.registry_suites()["liu2020-table1"]
    comparison = published.compare(frame, metrics, [suite],
                                   published.directions(metrics, get_plugin_manager()))
    comparison["source"] = "from the suite's own file"
    comparison.to_csv(copy / "comparison.csv", index=False)
    text = write_report(cli, copy, tmp_path / "b.html", "--stat", "sem")
    assert "from comparison.csv, written by harness suite" in text
    assert "from the suite&#x27;s own file" in text


@pytest.mark.parametrize(("where", "message"), [
    ("missing", "RESULTS_DIR {p}/missing does not exist (valid: a folder of run directories"),
    ("empty", "RESULTS_DIR {p}/empty holds no run directory (no */run.json;"),
    ("file", "RESULTS_DIR {p}/file is not a folder"),
])
def test_report_refuses_a_folder_without_runs(cli, tmp_path, where, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    result = cli("report", tmp_path / where, "--out", tmp_path / "r.html")
    assert result.code == 2 and result.err.startswith(f"error: {message.format(p=tmp_path)}")
    assert result.err.count("\n") == 1 and not (tmp_path / "r.html").exists()


def test_report_refuses_an_unwritable_out_or_unknown_suite(cli, results_dir, tmp_path):
    (tmp_path / "file").write_text("")
    before = sorted(p.name for p in results_dir.iterdir())
    for flags, message in [
        (["--out", tmp_path], f"error: --out {tmp_path}: cannot write the report: {tmp_path} "
                              "is a folder (valid: a file path in a writable folder)"),
        (["--out", tmp_path / "file" / "r.html"], "is not a folder (valid: a file path"),
        (["--out", tmp_path / "r.html", "--compare", "nope"], "nope"),
    ]:
        result = cli("report", results_dir, *flags)
        assert result.code == 2 and result.err.startswith("error: ") and message in result.err
        assert result.err.count("\n") == 1
    assert sorted(p.name for p in results_dir.iterdir()) == before  # no report.html either
    assert not (tmp_path / "r.html").exists()


def test_stops_swallowed_meanwhile_are_raised_again():
    from harness import signals

    since = signals.stops_so_far()
    signals.raise_if_stopped(since)  # none yet: nothing happens
    with pytest.raises(KeyboardInterrupt):
        signals.raise_interrupt(signal.SIGTERM, None)
    with pytest.raises(KeyboardInterrupt) as caught:
        signals.raise_if_stopped(since)
    assert signals.signal_of(caught.value) == "SIGTERM"
    signals.raise_if_stopped(signals.stops_so_far())  # a later point: nothing since


def swallow(signum: int) -> Callable[..., None]:
    """A stand-in for a step of the report that catches the stop signal's KeyboardInterrupt
    and goes on, as matplotlib's import of its 3-D toolkit does."""
    from harness import signals

    def step(*args: Any) -> None:
        with contextlib.suppress(KeyboardInterrupt):
            signals.raise_interrupt(signum, None)

    return step


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_swallowed_while_the_report_is_built_writes_nothing(cli, tmp_path, monkeypatch,
                                                                   signum, code):
    runs = tmp_path / "runs"
    make_run(runs, "a")
    out = tmp_path / "report.html"
    assert cli("report", runs, "--out", out).code == 0
    earlier = out.read_bytes()
    monkeypatch.setattr(report, "tradeoff_plot", swallow(signum))
    result = cli("report", runs, "--out", out)
    assert result.code == code
    assert result.err.endswith(f"interrupted ({signal.Signals(signum).name})\n")
    assert out.read_bytes() == earlier and sorted(p.name for p in tmp_path.iterdir()) == [
        "report.html", "runs"]  # no temporary file left either


@pytest.mark.parametrize(("where", "message"), [
    ("runs/a/metrics.json", "it is inside the run directory {tmp}/runs/a, whose files must not "
                            "be replaced (valid: a path outside every run directory, or a .html "
                            "file directly in one)"),
    ("runs/a/checkpoints/last.pt", "it is inside the run directory {tmp}/runs/a,"),
    ("runs/a/samples/page.html", "it is inside the run directory {tmp}/runs/a,"),
    ("link/metrics.json", "it is inside the run directory"),  # a link to the run
    ("notes.html", "the existing file {tmp}/notes.html is not a report harness report wrote, "
                   "so it is not overwritten (valid: another --out path, or delete the file "
                   "first)"),
    ("board.csv", "the existing file {tmp}/board.csv is not a report harness report wrote"),
])
def test_report_never_replaces_a_run_file_or_a_foreign_file(cli, tmp_path, monkeypatch, where,
                                                            message):
    run = make_run(tmp_path / "runs", "a")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"weights")
    (run / "samples").mkdir()
    (tmp_path / "link").symlink_to(run)
    (tmp_path / "notes.html").write_text("<!DOCTYPE html>\n<html><head><title>mine</title>")
    (tmp_path / "board.csv").write_text("dataset,n_seeds\nring,1\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr(report, "build", None)  # refused before the page is built
    result = cli("report", tmp_path / "runs", "--out", tmp_path / where)
    assert result.code == 2 and result.err.count("\n") == 1
    assert result.err.startswith(f"error: --out {tmp_path / where}: cannot write the report: ")
    assert message.format(tmp=tmp_path) in result.err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_report_replaces_its_own_earlier_page(cli, tmp_path):
    run = make_run(tmp_path / "runs", "a")
    out = tmp_path / "report.html"
    text = write_report(cli, tmp_path / "runs", out)
    assert '<meta name="generator" content="gan-harness ' in text.partition("</head>")[0]
    # a page written before the generator meta: recognised by its title
    out.write_text(text.replace(report.GENERATOR, '<meta name="other" content="x'))
    assert report.GENERATOR not in out.read_text()
    assert write_report(cli, tmp_path / "runs", out).count(report.GENERATOR) == 1
    result = cli("report", run)  # one run: its page beside its files, RUN/report.html
    assert result.code == 0 and result.err.startswith(f"wrote {run}/report.html (1 run, ")
    assert cli("report", run).code == 0  # and again


@pytest.mark.filterwarnings("error::pandas.errors.PerformanceWarning")
def test_a_wide_report_is_built_at_once_with_per_class_columns_in_numeric_order(cli, tmp_path):
    per_class = {f"intra_fid_digits_30_c{c}": float(c) for c in range(120)}
    metrics = dict(sorted({**METRICS, **per_class, **{f"kid_{c}": 1.0 for c in range(40)},
                           **{f"kid_{c}_std": 0.5 for c in range(40)}}.items()))
    for seed in range(2):
        make_run(tmp_path / "runs", f"s{seed}", seed=seed, metrics=metrics)
    text = write_report(cli, tmp_path / "runs", tmp_path / "report.html")
    board, _, runs = text.partition('<h2 id="runs">')
    for part in (board.partition("every column")[0], board.partition("every column")[2],
                 runs.partition("s0</h3>")[2].partition("</section>")[0]):
        columns = re.findall(r"<th>intra_fid_digits_30_c(\d+)(?:_mean)?</th>", part)
        assert columns[:12] == [str(c) for c in range(12)], columns[:12]
        assert len(columns) == 120

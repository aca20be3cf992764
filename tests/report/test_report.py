"""The analysis API and run directory, figures, report.html (opened in headless Chromium),
``tunnelscope report`` and ``tunnelscope compare``."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cli_helpers import run_cli
from tunnelscope import Results, analyze, data, train
from tunnelscope.probes import ProbeConfig
from tunnelscope.report import save_run
from tunnelscope.report.figures import compare_figure
from tunnelscope.results import ResultsError

DATA = "fashion-mnist[classes=0-4,per_class=300,test_per_class=100]"
OOD = "digits[per_class=60]"
FIGURES = ("probes", "probes_normalised", "rank", "collapse", "pc1", "cka", "metrics")  # metrics: the ridge proxy


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two small MLPs of different depth, trained briefly and analysed into run directories."""
    ds = data.load(DATA)
    out = {}
    for model in ("mlp-6x64", "mlp-3x64"):
        root = tmp_path_factory.mktemp(model)
        trained = train(model, ds, epochs=3, out=root / "train", batch_size=64, progress=False,
                        early_checkpoints=False)
        results = analyze(trained.final_checkpoint, ds, ood=[OOD], probe=ProbeConfig(protocol="harun", epochs=10),
                          progress=False)
        save_run(results, root / "analysis")
        out[model] = (root / "analysis", trained.final_checkpoint, results)
    return out


def test_run_directory_holds_everything_and_loads_back(runs):
    path, checkpoint, results = runs["mlp-6x64"]
    for name in ("results.parquet", "summary.json", "config.json", "report.html"):
        assert (path / name).is_file(), name
    for name in FIGURES:
        assert (path / "figures" / f"{name}.png").stat().st_size > 5000
        assert (path / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    loaded = Results.load(path)
    pd.testing.assert_frame_equal(loaded.table.reset_index(drop=True), results.table.reset_index(drop=True),
                                  check_dtype=False)
    assert loaded.summary == json.loads(json.dumps(results.summary, default=str))
    config = loaded.config
    assert config["model"]["checkpoint"] == str(checkpoint) and config["ood"] == [OOD]
    assert config["probes"]["probe"]["protocol"] == "harun" and config["probes"]["probe"]["epochs"] == 10
    assert config["statistics"]["samples"] == {"train": 1500, "test": 500}
    assert {"torch", "numpy", "tunnelscope"} <= set(config["versions"])
    assert config["points"] == [f"blocks.{i}" for i in range(5)]


def test_summary_follows_from_the_table_by_the_definitions(runs):
    _, _, results = runs["mlp-6x64"]
    acc = results.curve("probe_acc", with_input=False).to_numpy()
    # METRICS.md §3: first point reaching tau times the last (penultimate-layer) point's accuracy
    for tau in (0.95, 0.98):
        assert results.summary[f"tunnel_start@{tau}"] == 1 + int(np.argmax(acc >= tau * acc[-1]))
    ood = results.curve("probe_acc", OOD, with_input=False).to_numpy()
    (entry,) = results.summary["ood"]
    assert entry["retained_in_sample"] == pytest.approx(100 * ood[-1] / ood.max())
    assert entry["retained_ci"][0] <= entry["retained"] <= entry["retained_ci"][1]  # cross-fitted, in its interval
    assert entry["pearson"] == pytest.approx(np.corrcoef(acc, ood)[0, 1])
    errors = 1 - results.curve("ncc_acc", split="train", with_input=False).to_numpy()
    reached = np.flatnonzero(errors <= 0.01)
    assert results.summary["effective_depth"] == (int(reached[0]) + 1 if len(reached) else None)
    assert "the tunnel starts at layer" in results.summary["verdict"] or "no tunnel" in results.summary["verdict"]


def test_report_is_one_self_contained_file(runs):
    path, _, results = runs["mlp-6x64"]
    text = (path / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', text)) == len(FIGURES)
    assert results.summary["verdict"].split(";")[0] in text
    assert "<table" in text and "&quot;versions&quot;" in text


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.fail("no Chromium on PATH: run 'make setup' (it installs Debian's chromium) or apt-get install chromium")


def test_report_in_headless_chromium_loads_every_figure_offline(runs):
    from playwright.sync_api import sync_playwright

    path, _, _ = runs["mlp-6x64"]
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            def offline(route):  # the report must not need the network: record and refuse every fetch
                if route.request.url.startswith(("file:", "data:")):
                    route.continue_()
                else:
                    requests.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.goto((path / "report.html").as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            verdict = page.inner_text("#verdict")
            page.screenshot(path=str(path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert sorted(alt for alt, _, _ in images) == sorted(FIGURES)
    assert all(complete and width > 0 for _, complete, width in images), images
    assert errors == [] and requests == []
    assert "tunnel" in verdict
    assert (path / "report.png").stat().st_size > 20_000


def test_partial_and_unreadable_runs_are_refused(runs, tmp_path, capsys):
    path, _, _ = runs["mlp-6x64"]
    partial = tmp_path / "partial"
    shutil.copytree(path, partial)
    (partial / "summary.json").unlink()
    with pytest.raises(ResultsError, match="no complete analysis"):
        Results.load(partial)
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "results.parquet").write_bytes(b"not parquet")
    code, _, err = run_cli(["report", broken], capsys)
    assert code == 1 and err.startswith("tunnelscope: error: cannot read the results") and len(err.splitlines()) == 1


def test_report_command_rebuilds_figures_and_html_without_a_model(runs, tmp_path, capsys):
    path, _, _ = runs["mlp-6x64"]
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "figures")
    (copy / "report.html").unlink()
    code, out, _ = run_cli(["report", copy, "--json"], capsys)
    assert code == 0 and (copy / "report.html").is_file()
    assert sorted(p.stem for p in (copy / "figures").glob("*.png")) == sorted(FIGURES)
    assert json.loads(out) == {"report": str(copy / "report.html"), "figures": len(FIGURES)}


def test_compare_overlays_runs_of_different_depth(runs, tmp_path, capsys):
    deep, shallow = runs["mlp-6x64"], runs["mlp-3x64"]
    code, out, _ = run_cli(["compare", deep[0], shallow[0], "--out", tmp_path, "--json"], capsys)
    assert code == 0
    table = json.loads(out)
    assert [r["points"] for r in table] == [5, 2]
    assert (tmp_path / "compare.png").stat().st_size > 5000 and (tmp_path / "compare.csv").is_file()
    fig = compare_figure([deep[2], shallow[2]], ["deep", "shallow"])
    by_index, by_depth = fig.axes[0], fig.axes[1]
    lines = [line for line in by_index.get_lines() if line.get_label() in ("deep", "shallow")]
    assert [len(line.get_xdata()) for line in lines] == [5, 2]
    np.testing.assert_allclose(lines[0].get_ydata(), deep[2].curve("probe_acc", with_input=False).to_numpy())
    ends = [line.get_xdata()[-1] for line in by_depth.get_lines() if line.get_label() in ("deep", "shallow")]
    assert ends == [1.0, 1.0]
    rows = {ax.get_ylabel(): ax for ax in fig.axes[::2]}  # the left panel of each row
    ncc_train = [line for line in rows["NCC accuracy (train)"].get_lines() if line.get_label() == "deep"][0]
    np.testing.assert_allclose(ncc_train.get_ydata(),
                               deep[2].curve("ncc_acc", split="train", with_input=False).to_numpy())
    ood = [line for line in rows["OOD probe accuracy (test; mean over the OOD sets)"].get_lines()
           if line.get_label() == "deep"][0]
    np.testing.assert_allclose(ood.get_ydata(), deep[2].curve("probe_acc", OOD, with_input=False).to_numpy())
    assert "bands" not in fig._suptitle.get_text()  # no seed groups, so no bands to mention


def test_analyze_command_json_and_bad_input(runs, tmp_path, capsys):
    _, checkpoint, _ = runs["mlp-3x64"]
    out = tmp_path / "a"
    code, stdout, _ = run_cli(["analyze", "--checkpoint", checkpoint, "--data", DATA, "--metrics", "probe,rank",
                               "--probe-epochs", "2", "--out", out, "--json"], capsys)
    summary = json.loads(stdout)
    assert code == 0 and summary["points"] == 2 and (out / "report.html").is_file()
    assert Results.load(out).has("rank") and not Results.load(out).has("cka")
    code, _, err = run_cli(["analyze", "--checkpoint", checkpoint, "--data", DATA, "--out", out], capsys)
    assert code == 1 and "already holds analysis results" in err and "--overwrite" in err
    code, _, err = run_cli(["analyze", "--checkpoint", checkpoint, "--data", DATA, "--metrics", "rank,bogus",
                            "--out", tmp_path / "b"], capsys)
    assert code == 1 and "unknown metric(s) bogus" in err and len(err.splitlines()) == 1
    code, _, err = run_cli(["analyze", "--checkpoint", checkpoint, "--data", "digits[size=28]", "--out",
                            tmp_path / "c"], capsys)
    assert code == 1 and "has 5 classes" in err and len(err.splitlines()) == 1
    code, _, err = run_cli(["analyze", "--data", DATA, "--out", tmp_path / "d"], capsys)
    assert code == 2 and "--checkpoint" in err


def test_replacing_a_run_removes_its_old_figures_and_compare_needs_metrics(runs, tmp_path, capsys):
    path, checkpoint, results = runs["mlp-3x64"]
    target = tmp_path / "run"
    save_run(results, target)
    probe_only = analyze(checkpoint, DATA, metrics="probe", probe=ProbeConfig(protocol="harun", epochs=1),
                         progress=False)
    save_run(probe_only, target, overwrite=True)
    assert {p.stem for p in (target / "figures").iterdir()} == {"probes", "probes_normalised", "collapse"}  # + NCC
    cka_only = analyze(checkpoint, DATA, metrics="cka", progress=False)
    save_run(cka_only, tmp_path / "cka")
    code, _, err = run_cli(["compare", tmp_path / "cka", "--out", tmp_path / "cmp"], capsys)
    assert code == 1 and "none of the runs has probe, NCC or rank" in err and len(err.splitlines()) == 1
    stats_only = analyze(checkpoint, DATA, metrics="rank,ncc", progress=False)
    fig = compare_figure([probe_only, stats_only], ["probes", "stats"])
    assert [line.get_label() for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")] == \
        ["probes", "stats (NCC)"]


def test_summary_json_is_strict(runs):
    path, _, _ = runs["mlp-6x64"]
    json.loads((path / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))


def test_compare_gives_the_spread_over_training_seeds(runs, tmp_path, capsys):
    from scipy import stats

    shallow_dir, _, shallow = runs["mlp-3x64"]
    ds = data.load(DATA)
    again = train("mlp-3x64", ds, epochs=3, out=tmp_path / "seed1", batch_size=64, progress=False,
                  early_checkpoints=False, seed=1)
    other = analyze(again.final_checkpoint, ds, ood=[OOD], probe=ProbeConfig(protocol="harun", epochs=10),
                    progress=False)
    save_run(other, tmp_path / "seed1-analysis")
    code, out, _ = run_cli(["compare", shallow_dir, tmp_path / "seed1-analysis", runs["mlp-6x64"][0],
                            "--out", tmp_path / "cmp", "--json"], capsys)
    assert code == 0
    seeds = pd.read_csv(tmp_path / "cmp" / "seeds.csv")
    assert len(seeds) == 1 and seeds.runs.item() == 2 and seeds.seeds.item() == "0, 1"
    values = np.array([shallow.summary["mean_retained"], other.summary["mean_retained"]])
    half = stats.t.ppf(0.975, 1) * values.std(ddof=1) / np.sqrt(2)
    assert seeds["mean_retained mean"].item() == pytest.approx(values.mean())
    assert seeds["mean_retained ±95%"].item() == pytest.approx(half)
    fig = compare_figure([shallow, other], ["a", "b"], ["g", "g"])
    assert [line.get_label() for line in fig.axes[0].get_lines() if line.get_label().startswith("mlp")] == \
        ["mlp-3x64 (2 seeds)"]
    assert len(fig.axes[0].collections) == 1  # the band over seeds
    assert "bands: 95% interval over training seeds" in fig._suptitle.get_text()


def test_results_save_writes_the_data_alone_and_save_run_adds_figures_and_report(runs, tmp_path):
    _, _, results = runs["mlp-3x64"]
    data_only = results.save(tmp_path / "data")
    assert sorted(p.name for p in data_only.iterdir()) == ["config.json", "results.parquet", "summary.json"]
    assert Results.load(data_only).summary == json.loads(json.dumps(results.summary))
    full = save_run(results, tmp_path / "full")
    assert (full / "report.html").is_file() and any((full / "figures").glob("*.png"))


def test_compare_names_runs_that_share_a_folder_name_by_their_path(runs, tmp_path):
    from tunnelscope.report.compare import compare_runs

    path, _, _ = runs["mlp-3x64"]
    for parent in ("a", "b"):
        shutil.copytree(path, tmp_path / parent / "analysis")
    summary, _ = compare_runs([tmp_path / "a" / "analysis", tmp_path / "b" / "analysis"], tmp_path / "cmp")
    assert summary.run.nunique() == 2 and all("/a/" in r or "/b/" in r for r in summary.run)


def test_normalised_probe_curves_are_each_curve_over_its_maximum(runs):
    from tunnelscope.report.figures import normalised_probe_figure

    results = runs["mlp-6x64"][2]
    fig = normalised_probe_figure(results)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    for label, dataset in (("ID", "id"), (f"OOD {OOD}", OOD)):
        curve = results.curve("probe_acc", dataset).to_numpy()
        np.testing.assert_allclose(lines[label].get_ydata(), curve / curve.max(), rtol=1e-12)
        assert max(lines[label].get_ydata()) == 1.0


BACKEND_SCRIPT = """
import sys
import matplotlib
matplotlib.use("svg")
import tunnelscope.report, tunnelscope.report.compare, tunnelscope.report.sweep
from tunnelscope import Results
from tunnelscope.report import save_run
from tunnelscope.report.figures import run_figures, save_figures
results = Results.load(sys.argv[1])
assert save_figures(run_figures(results), sys.argv[2] + "/figures")
save_run(results, sys.argv[2] + "/run")
import matplotlib.pyplot as plt
print(matplotlib.get_backend(), len(plt.get_fignums()))
"""


def test_importing_and_drawing_leaves_the_users_matplotlib_backend_alone(runs, tmp_path):
    """A notebook's backend (here svg) is not switched to Agg by importing the report or by
    drawing and saving a run's figures, and no figure is left registered with pyplot."""
    path, _, _ = runs["mlp-3x64"]
    done = subprocess.run([sys.executable, "-c", BACKEND_SCRIPT, str(path), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "0"]
    assert (tmp_path / "figures" / "probes.png").stat().st_size > 5000


def test_a_run_whose_table_has_no_rows_is_refused_not_called_an_inversion(runs, tmp_path, capsys):
    import pandas as pd

    path, _, _ = runs["mlp-6x64"]
    copy = tmp_path / "empty"
    shutil.copytree(path, copy)
    table = pd.read_parquet(copy / "results.parquet")
    table.iloc[:0].to_parquet(copy / "results.parquet")
    code, out, err = run_cli(["report", copy], capsys)
    assert code != 0 and "inversion" not in out + err
    assert err.strip().startswith("tunnelscope: error:") and "holds no rows" in err


@pytest.mark.parametrize("name, content, message", [
    ("summary.json", "[]", "summary.json holds a list, not a JSON object"),
    ("summary.json", '"x"', "holds a str"),
    ("summary.json", '{"verdict": 3, "points": "a"}', "summary.json: points is 'a', not an integer"),
    ("config.json", "[]", "config.json holds a list"),
    ("config.json", '{"points": 5}', "config.json: points is 5, not a list of text"),
    ("config.json", '{"probes": {"probe": "lbfgs"}}', "config.json: probes.probe is 'lbfgs', not an object"),
])
def test_a_tampered_summary_or_config_is_refused_in_one_line(runs, tmp_path, capsys, name, content, message):
    path, _, _ = runs["mlp-6x64"]
    copy = tmp_path / "tampered"
    shutil.copytree(path, copy)
    (copy / name).write_text(content)
    code, _, err = run_cli(["report", copy], capsys)
    assert code != 0 and err.count("\n") == 1 and message in err, err


def test_a_results_table_with_duplicate_rows_is_refused(runs, tmp_path, capsys):
    import pandas as pd

    path, _, _ = runs["mlp-6x64"]
    copy = tmp_path / "doubled"
    shutil.copytree(path, copy)
    table = pd.read_parquet(copy / "results.parquet")
    pd.concat([table, table.iloc[:3]]).to_parquet(copy / "results.parquet")
    code, _, err = run_cli(["report", copy], capsys)
    assert code != 0 and "holds 3 duplicated row(s)" in err


def _variant(results: Results, **summary) -> Results:
    """The run with its summary changed (a claimed, an unclaimed or an invalid verdict)."""
    return Results(results.table, {**results.summary, **summary}, results.config, results.path)


@pytest.mark.parametrize("claimed, valid, banner, start_label", [
    (True, True, "verdict tunnel", "tunnel start (τ = 0.95)"),
    (False, True, "verdict", "first layer within 5% of the final ID accuracy (no tunnel claimed)"),
    (True, False, "verdict invalid", "first layer within 5% of the final ID accuracy (no tunnel claimed)"),
])
def test_the_banner_the_summary_and_the_shading_agree_on_whether_there_is_a_tunnel(runs, claimed, valid, banner,
                                                                                 start_label):
    from matplotlib.patches import Rectangle

    from tunnelscope.report.figures import probe_figure
    from tunnelscope.report.html import render

    _, _, results = runs["mlp-6x64"]
    run = _variant(results, tunnel_claimed=claimed, verdict_valid=valid, **{"tunnel_start@0.95": 2})
    page = render(run, {})
    assert f'<p class="{banner}" id="verdict">' in page
    assert f"<th>{start_label}</th>" in page
    assert ("<th>tunnel strength</th>" in page) == (claimed and valid)
    ax = probe_figure(run).axes[0]
    shaded = [p for p in ax.patches if isinstance(p, Rectangle) or "tunnel" in str(p.get_label())]
    labels = [t.get_text() for t in ax.figure.legends[0].get_texts()]
    assert any(label.startswith("tunnel (from layer 2)") for label in labels) == (claimed and valid)
    assert any("no tunnel claimed" in label for label in labels) == (not (claimed and valid))
    assert bool(shaded) == (claimed and valid)


def test_the_per_layer_table_reads_probe_columns_first_and_keeps_intervals_on_one_line(runs):
    from tunnelscope.metrics import PRESENTATIONS
    from tunnelscope.report.html import render

    _, _, results = runs["mlp-6x64"]
    page = render(results, {})
    table = page.split("<h2>Per layer")[1]
    head = re.findall(r"<th>([^<]*)</th>", table.split("</tr>")[0])
    assert head[:4] == ["layer", "point", "probe_acc", f"probe_acc@{OOD}"]
    order = list(PRESENTATIONS)
    rest = [h.split("@")[0] for h in head[4:]]
    assert rest == sorted(rest, key=order.index)  # the registry's order, not the alphabet's
    assert '<div class="wide"><table>' in page and '<span class="ci">[' in table
    # every interval of the table sits in a no-wrap span: none is left bare to wrap over lines
    body = table.split("<h2>")[0]
    intervals = re.findall(r"\[[-\d.e]+, [-\d.e]+\]", body)
    assert intervals and len(re.findall(r'<span class="ci">\[[-\d.e]+, [-\d.e]+\]</span>', body)) == len(intervals)


def test_the_report_fits_1400_pixels_in_chromium(runs, tmp_path):
    """No horizontal overflow at 1400 px (the page's scroll width is its client width), even with
    three long-named OOD sets, whose columns made the demo's report 1,581 px wide."""
    from playwright.sync_api import sync_playwright

    _, _, results = runs["mlp-6x64"]
    table = results.table
    extra = [table[table.dataset == OOD].assign(dataset=f"fashion-mnist[classes=5-9,per_class=1000,seed={k}]")
             for k in range(2)]
    path = tmp_path / "wide"
    save_run(Results(pd.concat([table, *extra], ignore_index=True), results.summary, results.config), path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto((path / "report.html").as_uri())
            page.wait_for_load_state("load")
            scroll, client = page.evaluate("[document.documentElement.scrollWidth, "
                                           "document.documentElement.clientWidth]")
        finally:
            browser.close()
    assert scroll <= client, (scroll, client)


def test_an_untrained_reference_that_retains_more_is_explained():
    from tunnelscope.verdict import reference_flags

    (flag,) = reference_flags({"mean_retained": 92.0}, {"mean_retained": 96.4})
    assert flag.code == "reference_retains_more" and not flag.blocking and "96.4%" in flag.message
    assert reference_flags({"mean_retained": 96.4}, {"mean_retained": 92.0}) == []
    assert reference_flags({}, {"mean_retained": 92.0}) == []


def test_a_notebook_gets_one_figure_or_the_whole_report_without_a_run_directory(runs):
    from matplotlib.figure import Figure

    from tunnelscope.errors import ConfigError
    from tunnelscope.report import plot, view

    _, _, results = runs["mlp-6x64"]
    fig = plot(results)  # the probe figure: one line per dataset
    assert isinstance(fig, Figure)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert any(label.startswith("ID") for label in labels) and any(OOD in label for label in labels)
    assert isinstance(plot(results, "rank"), Figure)
    with pytest.raises(ConfigError, match="no figure 'spectra' for this run; it has: probes"):
        plot(results, "spectra")
    page = view(results)._repr_html_()
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    import html

    assert html.escape(results.summary["verdict"]) in page

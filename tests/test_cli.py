import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli
from optional import require


def test_help_lists_commands_with_examples(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and all(c in out for c in ("train", "datasets", "models", "demo", "analyze", "report", "compare"))
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0 and "Examples:" in out and "--resume" in out


def test_datasets_json(capsys):
    code, out, _ = run_cli(["datasets", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["fashion-mnist"]["available"] and rows["digits"]["available"]


def test_models_json(capsys):
    code, out, _ = run_cli(["models", "--json"], capsys)
    rows = {r["family"]: r for r in json.loads(out) if "family" in r}
    assert code == 0 and rows["mlp"]["blocks"] == 11 and rows["resnet"]["conv"] == 17


def test_train_json_summary(tmp_path, capsys):
    code, out, _ = run_cli(["train", "--model", "mlp-3x32", "--data", "digits", "--epochs", "1",
                            "--batch-size", "64", "--out", str(tmp_path), "--json"], capsys)
    summary = json.loads(out)
    assert code == 0 and 0.5 < summary["test_accuracy"] <= 1.0
    assert (tmp_path / "history.csv").is_file() and (tmp_path / "run.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--model", "mlp-12", "--data", "digits"], "unknown model spec"),
    (["--model", "mlp-3x32", "--data", "digitz"], "unknown dataset"),
    (["--model", "mlp-0x32", "--data", "digits"], "impossible depth"),
    (["--model", "mlp-3x0", "--data", "digits"], "impossible width"),
    (["--model", "vgg11", "--data", "mnist1d"], "takes images"),
    (["--model", "tv:resnet18", "--data", "digits[size=32]"], "channels"),
    (["--model", "mlp-3x32", "--data", "cifar10"], "`tunnelscope fetch cifar10`"),
    (["--model", "mlp-3x32", "--data", "digits", "--device", "cuda:0"], "CUDA is not available"),
    (["--model", "mlp-3x32", "--data", "digits", "--resume"], "nothing to resume"),
])
def test_train_bad_inputs_give_one_line(args, message, tmp_path, capsys, no_data):
    code, out, err = run_cli(["train", *args, "--epochs", "1", "--out", str(tmp_path / "o"), "-q"], capsys)
    assert code == 1 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_fashion_offline(tmp_path, capsys, no_data):
    code, _, err = run_cli(["train", "--model", "mlp-3x32", "--data", "fashion-mnist", "--out", str(tmp_path)], capsys)
    assert code == 1 and "apt-get install dataset-fashion-mnist" in err and "`tunnelscope fetch fashion-mnist`" in err


def test_a_missing_dataset_suggests_a_command_that_exists(tmp_path, capsys, no_data):
    """analyze has no --download: its error names `tunnelscope fetch`, which is a command, and
    which fetches (here an offline dataset, so no network is needed)."""
    from tunnelscope.cli import cli

    code, _, err = run_cli(["analyze", "--model", "mlp-3x32", "--data", "cifar10", "--out", str(tmp_path / "a")],
                           capsys)
    assert code == 1 and "`tunnelscope fetch cifar10`" in err and "--download" not in err
    assert "fetch" in cli.commands
    code, out, _ = run_cli(["fetch", "digits"], capsys)
    assert code == 0 and "digits: ready" in out


def test_corrupt_resume_state(tmp_path, capsys):
    (tmp_path / "resume.pt").write_bytes(b"garbage")
    code, _, err = run_cli(["train", "--model", "mlp-3x32", "--data", "digits", "--out", str(tmp_path),
                            "--resume", "-q"], capsys)
    assert code == 1 and "corrupt" in err and err.count("\n") == 1


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tunnelscope.cli", "train", "--model", "nope", "--data", "digits",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("tunnelscope: error: unknown model spec")
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "tunnelscope.cli", "train", "--data", "digits"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("tunnelscope: error: Missing option '--model'")
    assert len(proc.stderr.splitlines()) == 1 and "tunnelscope train --help" in proc.stderr


@pytest.mark.slow
def test_demo_quick_trains_analyses_and_is_reused(tmp_path, capsys):
    code, out, err = run_cli(["demo", "--quick", "--out", str(tmp_path)], capsys)
    assert code == 0 and "fashion-mnist[classes=0-4," in err  # spec brackets survive rich markup
    verdict = next(line for line in out.splitlines() if "mean OOD accuracy retained" in line and ";" in line)
    assert verdict.startswith(("the tunnel starts at layer", "no tunnel evidence", "NOT A VALID VERDICT"))
    assert f"report: {tmp_path / 'report.html'}" in out.splitlines()
    assert "untrained reference" in out
    for name in ("results.parquet", "summary.json", "config.json", "report.html", "figures/probes.png"):
        assert (tmp_path / name).is_file(), name
    code, out, _ = run_cli(["demo", "--quick", "--out", str(tmp_path), "--json"], capsys)
    again = json.loads(out)
    assert code == 0 and again["training"]["reused"] and again["training"]["analysis_reused"]
    assert again["training"]["test_accuracy"] > 0.7 and again["points"] == 8
    assert again["reference"]["untrained"]["model_accuracy"] < 0.4
    assert again["mean_retained_ci"][0] <= again["mean_retained"]
    assert [o["name"].split("[")[0] for o in again["ood"]] == ["fashion-mnist", "digits"]


HEAVY = ("torch", "torchvision", "pandas", "matplotlib", "ray")


def test_help_imports_nothing_heavy():
    """``--help`` answers without torch & co. (checked on sys.modules, not on the clock)."""
    code = ("import sys; from tunnelscope.cli import main; import tunnelscope; "
            "codes = [main(a) for a in (['--help'], ['analyze', '--help'], ['demo', '--help'], ['invert', '--help'])]; "
            f"print(codes, [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "[0, 0, 0, 0] []"


@pytest.mark.parametrize("command", [["analyze", "--data", "digits", "--out", "o"], ["invert", "--data", "digits",
                                                                                    "--out", "o"]])
def test_a_missing_checkpoint_is_refused_before_torch_is_imported(command):
    """The error is one line and costs no torch import (it took seconds of CPU; Issue 25, item 7)."""
    code = ("import sys; from tunnelscope.cli import main; "
            f"rc = main({[command[0], '--checkpoint', '/no/such/file.pt', *command[1:]]!r}); "
            "print(rc, 'torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "1 False", proc.stderr
    assert "does not exist" in lines[-2] and "Traceback" not in proc.stderr

def test_the_analysis_engine_does_not_import_torchvision_models():
    """Importing ``torchvision.models`` pulls in torch._dynamo (seconds of CPU per process): the
    zoo's ResNets import torchvision's BasicBlock only when one is built."""
    code = ("import sys, tunnelscope, tunnelscope.engine, tunnelscope.models; "
            "tunnelscope.models.build('mlp-2x8', 3, (1, 4, 4)); print('torchvision.models' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_metrics_help_names_real_metrics_and_a_wrong_one_lists_them(tmp_path, capsys):
    from tunnelscope.cli import METRIC_EXAMPLES
    from tunnelscope.engine.analyze import ANALYZE_METRICS

    assert set(METRIC_EXAMPLES) <= set(ANALYZE_METRICS)
    code, _, err = run_cli(["analyze", "--model", "mlp-3x32", "--data", "digits", "--metrics", "nope",
                            "--out", tmp_path / "a"], capsys)
    assert code == 1 and all(name in err for name in ANALYZE_METRICS)


def test_lazy_package_gives_the_public_api():
    # importing the train subpackage first must not turn ts.train into the subpackage
    code = ("import types, tunnelscope as ts; import tunnelscope.train.loop; "
            "assert isinstance(ts.train, types.FunctionType) and ts.train.__module__ == 'tunnelscope.train.loop'; "
            "from tunnelscope import *; "
            "assert callable(analyze) and callable(load_model) and Results.__name__ == 'Results'; "
            "assert hasattr(data, 'load') and hasattr(models, 'build') and 'train' in dir(ts); "
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    import tunnelscope

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tunnelscope.nope  # noqa: B018


def test_a_metric_that_does_not_fit_is_skipped_with_one_warning_line(tmp_path):
    """--metrics all on points wider than full-data CKA allows: the run goes on and the CLI says
    why in one line (a real process: pytest would capture the warning itself)."""
    script = Path(sys.executable).parent / "tunnelscope"
    proc = subprocess.run([str(script), "analyze", "--model", "mlp-3x2100", "--data", "digits[classes=0-4]",
                           "--metrics", "all", "--out", str(tmp_path / "wide"), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["tunnelscope: warning: cka_full not computed: full-data CKA over 4264 dims exceeds 4096; use "
                     "minibatch CKA, fewer points, or a smaller reduction (gap, project:D)"]


def test_analyze_records_the_galanti_and_nguyen_options(tmp_path, capsys):
    """--ncc-eps, --cka-passes and --max-dim 0 (no coordinate cap) reach the analysis and its record."""
    import json

    out = tmp_path / "a"
    data = "digits[size=16,per_class=30,test_per_class=10]"
    code, _, err = run_cli(["analyze", "--model", "convnet-1x8", "--data", data,
                            "--metrics", "ncc,cdnv,cka", "--reduce", "flatten", "--max-dim", 0, "--ncc-eps", 0.2,
                            "--cka-passes", 2, "--batch-size", 32, "--out", out, "-q"], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert config["max_dim"] is None and config["ncc_eps"] == 0.2 and config["cka_passes"] == 2
    assert config["statistics"]["layout"]["features.2"]["dims"] == 128  # 8 channels x 4 x 4, whole
    assert config["statistics"]["passes"][-1] == "test (shuffled, 2/2)" and summary["ncc_eps"] == 0.2


def test_experiment_commands_run_end_to_end(tmp_path, capsys):
    """intervene movement / reset and agreement, on a one-epoch run: files written, exit 0;
    a bad request is one line and exit 1."""
    from tunnelscope import train

    data = "digits[classes=0-4,per_class=30,test_per_class=10]"
    run = train("mlp-3x16", data, epochs=1, out=tmp_path / "run", batch_size=32, progress=False)
    code, out, err = run_cli(["intervene", "movement", tmp_path / "run", "--out", tmp_path / "i"], capsys)
    assert code == 0, err
    assert (tmp_path / "i" / "movement.csv").is_file() and "weight movement" in out
    code, out, err = run_cli(["intervene", "reset", tmp_path / "run", "--out", tmp_path / "i", "--json"], capsys)
    assert code == 1 and err.count("\n") == 1 and "already holds" in err  # one intervention per folder
    code, out, err = run_cli(["intervene", "reset", tmp_path / "run", "--out", tmp_path / "r", "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["k"] == 1, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["intervention"] == "resets"
    code, out, err = run_cli(["intervene", "reset", tmp_path / "run", "--out", tmp_path / "i", "-q", "--overwrite"],
                             capsys)
    assert code == 0 and not (tmp_path / "i" / "movement.csv").exists() and (tmp_path / "i" / "reset.csv").is_file()
    code, _, err = run_cli(["intervene", "delete-blocks", run.final_checkpoint, "--out", tmp_path / "d"], capsys)
    assert code == 1 and err.count("\n") == 1 and "residual" in err
    ck, first = run.final_checkpoint, run.checkpoints[0]
    code, out, err = run_cli(["agreement", ck, ck, "--data", data, "--out", tmp_path / "a"], capsys)
    assert code == 1 and err.count("\n") == 1 and "given more than once" in err  # kappa 1 by construction
    code, out, err = run_cli(["agreement", first, ck, "--data", data, "--out", tmp_path / "a", "--json"], capsys)
    assert code == 0, err
    assert 0 <= json.loads(out)["pairs"][0]["agreement"] <= 1 and (tmp_path / "a" / "config.json").is_file()
    code, out, err = run_cli(["dynamics", tmp_path / "run", "--metrics", "probe,rank", "--steps", "log:2",
                              "--resamples", 0, "--out", tmp_path / "dyn", "--json"], capsys)
    assert code == 0, err
    assert len(json.loads(out)["steps"]) == 2 and (tmp_path / "dyn" / "dynamics.parquet").is_file()


def test_continual_command_prints_the_swap_table(tmp_path, capsys):
    args = ["continual", "--model", "mlp-3x16", "--task1", "digits[classes=0-2,per_class=40,test_per_class=10]",
            "--task2", "digits[classes=3-5,per_class=40,test_per_class=10]", "--epochs", 1, "--finetune-epochs", 1,
            "--split-at", 2, "--batch-size", 32, "--out", tmp_path / "cl"]
    code, out, err = run_cli([*args, "-q", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["split"]["layer"] == 2 and len(result["swaps"]) == 6 and len(result["forgetting"]) == 2
    assert (tmp_path / "cl" / "swaps.csv").is_file() and (tmp_path / "cl" / "continual.png").is_file()
    code, _, err = run_cli([*args[:-2], "--task2", "digits[classes=3-6]", "--out", tmp_path / "c2"], capsys)
    assert code == 1 and err.count("\n") == 1


def test_cross_cka_aligns_two_models_of_different_depths(tmp_path, capsys):
    """A 3-point and a 2-point MLP: an L_a x L_b matrix whose values equal the library's, a
    figure, and the best match of each of A's points."""
    from tunnelscope import train
    from tunnelscope.engine.cross_model import cross_model_cka

    data = "digits[classes=0-4,per_class=30,test_per_class=20]"
    a, b = (train(spec, data, epochs=1, out=tmp_path / spec, batch_size=32, early_checkpoints=False,
                  progress=False).final_checkpoint for spec in ("mlp-4x16", "mlp-3x16"))
    args = ["cross-cka", a, b, "--data", data, "--batch-size", 25, "--out", tmp_path / "x"]
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    direct = cross_model_cka(a, b, data, batch_size=25, progress=False)
    assert np.allclose(result["matrix"]["data"], direct.to_numpy(), atol=1e-12)
    assert len(result["matrix"]["index"]) == 3 and len(result["matrix"]["columns"]) == 2
    assert (tmp_path / "x" / "cross_cka.png").is_file() and set(result["best_match"]) == set(direct.index)
    assert (tmp_path / "x" / "cross_cka.csv").read_text() == direct.to_csv()
    assert json.loads((tmp_path / "x" / "config.json").read_text())["kind"] == "cross-cka"
    code, _, err = run_cli([*args, "-q"], capsys)  # the folder is taken
    assert code == 1 and "--overwrite" in err and err.count("\n") == 1
    code, _, err = run_cli([*args, "-q", "--overwrite"], capsys)
    assert code == 0, err


def test_explain_command_finds_the_planted_variable(tmp_path, capsys):
    require("shap")
    import pandas as pd

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"aug": rng.integers(0, 2, 200), "depth": rng.integers(0, 4, 200),
                          "noise": rng.integers(0, 3, 200)})
    table["retained"] = 60 + 15 * table.aug + rng.normal(0, 1, 200)
    table.to_csv(tmp_path / "t.csv", index=False)
    code, out, err = run_cli(["explain", tmp_path / "t.csv", "--target", "retained", "--vars", "aug", "--vars", "depth",
                              "--vars", "noise", "--out", tmp_path / "e", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    slopes = {row["variable"]: abs(row["slope"]) for row in result["slopes"]}
    assert max(slopes, key=slopes.get) == "aug" and result["r2"] > 0.9
    table.assign(cell=np.arange(200) // 2).to_csv(tmp_path / "c.csv", index=False)  # two rows per cell
    code, out, err = run_cli(["explain", tmp_path / "c.csv", "--target", "retained", "--vars", "aug", "--vars", "depth",
                              "--cluster", "cell", "--out", tmp_path / "c", "--json"], capsys)
    assert code == 0, err
    means = json.loads(out)["group_means"]
    assert sum(row["n"] for row in means if row["variable"] == "aug") == 200
    assert json.loads((tmp_path / "c" / "config.json").read_text())["cluster"] == "cell"
    code, _, err = run_cli(["explain", tmp_path / "t.csv", "--target", "nope", "--out", tmp_path / "f"], capsys)
    assert code == 1 and err.count("\n") == 1
    args = ["explain", tmp_path / "t.csv", "--target", "retained", "--vars", "aug", "--out", tmp_path / "e", "--json"]
    code, _, err = run_cli(args, capsys)  # the folder is taken
    assert code == 1 and "--overwrite" in err and err.count("\n") == 1
    code, out, err = run_cli([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "e" / "config.json").read_text())["kind"] == "explain"


def test_a_frame_too_wide_for_the_terminal_is_shown_transposed_with_every_value_whole(monkeypatch):
    """compare's run table was unreadable at 120 columns (Issue 25, item 8): with fewer rows than
    columns it is turned so that each run is a column and no value is split."""
    import io

    import pandas as pd
    from rich.console import Console

    from tunnelscope import cli_support

    sink = io.StringIO()
    monkeypatch.setattr(cli_support, "out_console", Console(file=sink, width=120, force_terminal=True,
                                                            color_system=None, soft_wrap=True))
    columns = {"run": ["vgg11-w0.125 (demo)", "mlp-12x256 (mlp12-analysis)"]}
    columns.update({f"metric_number_{i}_with_a_long_name": [0.123456 + i, 9.87654 + i] for i in range(12)})
    cli_support.print_frame(pd.DataFrame(columns), "runs")
    text = sink.getvalue()
    assert "one column per row" in text
    assert max(len(line) for line in text.splitlines()) <= 120
    for value in ("vgg11-w0.125 (demo)", "mlp-12x256 (mlp12-analysis)", "metric_number_11_with_a_long_name", "20.88"):
        assert value in text

"""The papers' recipes (examples/papers/) run end to end at --scale tiny on synthetic stand-ins,
and a recipe resolves its scale as documented."""

from __future__ import annotations

import json

import pytest
import yaml

from cli_helpers import run_cli
from tunnelscope.errors import ConfigError
from tunnelscope.experiments.reproduce import RECIPES_DIR, load_recipe, recipe_names

# what each paper's tiny run must draw (relative to its --out)
FIGURES = {
    "masarczyk": ["figures/by-model.png"],
    "harun": ["figures/by-model.png"],
    "galanti": ["figures/by-noise.png"],
    "nguyen": ["figures/cka-grid.png"],
    "badger": ["invert/inversion/figures/inversion-scores.png",
               "invert/inversion/figures/inversion-grid-trained.png"],
}


def test_every_paper_has_a_recipe():
    assert recipe_names() == sorted(FIGURES)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("paper", sorted(FIGURES))
def test_the_tiny_recipe_runs_end_to_end_and_draws_the_papers_figures(paper, tmp_path, capsys):
    out = tmp_path / paper
    code, stdout, err = run_cli(["reproduce", paper, "--scale", "tiny", "--out", out, "--json"], capsys)
    assert code == 0, err
    done = json.loads(stdout)
    assert done["paper"] == paper and done["scale"] == "tiny"
    for figure in FIGURES[paper]:
        assert (out / figure).is_file() and (out / figure).stat().st_size > 1000, figure
    recorded = json.loads((out / "recipe.json").read_text())
    assert recorded["scale"] == "tiny" and recorded["compute"]["tiny"] and recorded["compute"]["full"]
    if "sweep" in done:
        assert done["sweep"]["ran"] == done["sweep"]["cells"] >= 2
        again = run_cli(["reproduce", paper, "--scale", "tiny", "--out", out, "--json"], capsys)
        assert again[0] == 0 and json.loads(again[1])["sweep"]["ran"] == 0  # resumed: nothing left to run


def test_tiny_changes_replace_the_keys_they_name_and_keep_the_others():
    full, tiny = load_recipe("masarczyk", "full"), load_recipe("masarczyk", "tiny")
    raw = yaml.safe_load((RECIPES_DIR / "masarczyk.yaml").read_text())
    assert full.sweep == raw["sweep"]
    assert tiny.sweep["grid"] == raw["tiny"]["sweep"]["grid"]
    assert tiny.sweep["cell"] == {**raw["sweep"]["cell"], **raw["tiny"]["sweep"]["cell"]}
    kept = set(raw["sweep"]["analysis"]) - set(raw["tiny"]["sweep"]["analysis"])  # keys tiny does not name
    assert kept and all(tiny.sweep["analysis"][key] == raw["sweep"]["analysis"][key] for key in kept)


def test_bad_recipes_and_missing_folders_are_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IMAGENET100", raising=False)
    code, _, err = run_cli(["reproduce", "harun", "--scale", "full", "--out", tmp_path / "h"], capsys)
    assert code == 1 and "set the environment variable IMAGENET100" in err and err.count("\n") == 1
    code, _, err = run_cli(["reproduce", "nobody", "--out", tmp_path / "n"], capsys)
    assert code == 1 and "no recipe for 'nobody'; the recipes: badger, galanti, harun, masarczyk, nguyen" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"paper": "x", "title": "x", "sweep": {}, "tiny": {"invert": {"steps": 1}}}))
    with pytest.raises(ConfigError, match="tiny changes 'invert', which the recipe does not have"):
        load_recipe(bad, "tiny")
    bad.write_text(yaml.safe_dump({"paper": "x", "title": "x", "colour": 1, "sweep": {}}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['colour'\]"):
        load_recipe(bad)

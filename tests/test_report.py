"""`logitguard report`: runs of every kind side by side, HTML + PNGs, rendered in headless Chromium if present."""

import json
import shutil
import subprocess

import pytest

from logitguard.cli.main import main


def make_runs(root):
    """A train run (log + eval summary), an eval-only run and a demo run, as the commands write them."""
    train = root / "lora-str"
    (train / "eval").mkdir(parents=True)
    log = [{"safety/refusal_rate": 1.0, "step": 0}]
    log += [{"loss": 2.0 / s, "task_loss": 1.9 / s, "str_anchor": 0.1 / s, "step": s} for s in (10, 20, 30)]
    log += [{"safety/refusal_rate": 0.9, "step": 30}]
    (train / "train_log.json").write_text(json.dumps(log))
    summary = {"harmful_refusal": 0.9, "attack_success_rate": 0.1, "benign_over_refusal": 0.05, "task_accuracy": 0.8}
    (train / "eval" / "summary.json").write_text(json.dumps(summary))
    evaluated = root / "api-model"
    evaluated.mkdir()
    (evaluated / "summary.json").write_text(json.dumps({"harmful_refusal": 0.2, "attack_success_rate": 0.8}))
    demo = root / "demo"
    (demo / "sft").mkdir(parents=True)
    results = {
        "models": {"aligned": {"harmful_refusal": 1.0, "task_accuracy": 0.0}, "sft": {"harmful_refusal": 0.0}},
        "refusal_curves": {"sft": [{"step": 0, "harmful_refusal": 1.0}, {"step": 50, "harmful_refusal": 0.0}]},
    }
    (demo / "results.json").write_text(json.dumps(results))
    (demo / "sft" / "history.json").write_text(json.dumps([{"step": 1, "loss": 1.0, "str_anchor": 0.0}]))
    return [train, evaluated, demo]


def test_report_puts_every_run_in_one_self_contained_page(tmp_path, capsys):
    runs = make_runs(tmp_path)
    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    for name in ("lora-str", "api-model", "aligned", "sft"):
        assert f"<td>{name}</td>" in page
    assert page.count("data:image/png;base64,") == 4  # refusal curves, refusal vs over-refusal, vs utility, losses
    assert "<td>90.0%</td>" in page and "<td>80.0%</td>" in page
    for png in ("refusal_over_steps.png", "safety_vs_utility.png", "loss_terms.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "| lora-str | 90.0% | 10.0% | 5.0% | 80.0% |" in capsys.readouterr().out


def test_runs_with_the_same_names_get_their_directory_as_prefix(tmp_path):
    from logitguard.evaluation.report import collect_runs

    demo = make_runs(tmp_path)[2]
    again = tmp_path / "demo2"
    shutil.copytree(demo, again)
    assert [r.name for r in collect_runs([demo, again])] == ["demo/aligned", "demo/sft", "demo2/aligned", "demo2/sft"]


def test_bad_run_directories_fail_clearly_and_keep_an_earlier_report(tmp_path, capsys):
    runs = make_runs(tmp_path)
    out = tmp_path / "report"
    assert main(["report", str(runs[0]), "--out", str(out)]) == 0
    before = (out / "report.html").read_bytes()
    (tmp_path / "empty").mkdir()
    assert main(["report", str(runs[0]), str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "empty: no results (expected results.json, train_log.json or summary.json)" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    assert main(["report", str(tmp_path / "broken"), "--out", str(out)]) == 2
    assert "summary.json: malformed JSON" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert (out / "report.html").read_bytes() == before


CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed")
def test_report_renders_in_headless_chromium(tmp_path):
    import matplotlib.image

    out = tmp_path / "report"
    assert main(["report", *map(str, make_runs(tmp_path)), "--out", str(out)]) == 0
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,1600", (out / "report.html").as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] == 1600 and pixels.std() > 0.05  # not a blank page


def test_the_figure_legend_names_every_method_of_every_panel_in_the_style_of_its_points():
    from logitguard.evaluation.plots import legend_entries

    panels = {"benign": {"sft": [(0.1, 0.2)], "safeinstr": [(0.1, 0.3)]}, "harmful": {"sft": [(0.2, 0.2)], "str": []}}
    entries = legend_entries(panels, aligned=True)
    assert [name for name, _ in entries] == ["sft", "safeinstr", "str", "aligned model"]  # safeinstr: benign only
    styles = [(style["marker"], style["color"]) for _, style in entries]
    assert len(set(styles)) == len(styles)
    assert [name for name, _ in legend_entries(panels)] == ["sft", "safeinstr", "str"]

"""benchmarks/: the before/after comparison of published results and the performance chapter's
page (not the timings themselves: those are measured by hand, not in a test)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from wm import ROOT


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_before_after_of_a_revision_with_itself_shows_no_difference():
    ba = _load("before_after")
    c = ba.compare("HEAD", "HEAD", "image_processing")
    assert len(c["rows"]) > 20 and c["only_before"] == c["only_after"] == 0
    assert (c["rows"]["diff"] == 0).all()
    assert set(c["headline"].metric) >= {"psnr", "success_rate"}  # the invisibility and surrogate rows
    assert not c["rows"].metric.str.contains("seconds").any()  # timings are not results
    text = ba.markdown([c], "HEAD", "HEAD")
    assert "### image_processing" in text and "(1.00×)" in text


def test_before_after_compares_values_row_by_row(tmp_path, monkeypatch):
    ba = _load("before_after")
    before = "study,method,model,experiment,attack,strength,seed,metric,value,profile\n" \
             "s,deep,unet,invisibility,none,,0,psnr,40.0,cpu\ns,deep,unet,invisibility,none,,1,psnr,42.0,cpu\n" \
             "s,deep,unet,invisibility,none,,0,seconds,9.0,cpu\n"
    after = before.replace("42.0", "44.0").replace("9.0", "3.0")
    files = {("A", "data/results/image_processing.csv"): before, ("B", "data/results/image_processing.csv"): after}
    monkeypatch.setattr(ba, "_read", lambda rev, path: files.get((rev, path)))
    c = ba.compare("A", "B", "image_processing")
    row = c["rows"].iloc[0]
    assert len(c["rows"]) == 1 and row.metric == "psnr"  # seconds dropped, seeds averaged
    assert row.value_before == 41.0 and row.value_after == 42.0 and row["diff"] == 1.0
    assert ba.compare("A", "C", "image_processing") is None  # no results at C


@pytest.mark.parametrize("args,message", [(["--before", "HEAD", "--studies", "nope"], "unknown study nope"),
                                          (["--before", "no-such-rev"], "not a git revision")])
def test_before_after_rejects_bad_arguments(args, message):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "before_after.py"), *args],
                         capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stderr


def test_performance_page_holds_reference_rows_to_no_target(tmp_path, monkeypatch):
    bench = _load("bench")
    m = lambda ips: bench.Measurement(seconds=1.0, images=ips, train_loss=1.0)  # noqa: E731
    rows = [bench.Row("cpu", "image processing (H/R/D)", "setup", 10, [m(100)], [m(140)]),
            bench.Row("cpu", "image processing (H/R/D), amp=False", "setup", 10, [m(100)], [m(110)], reference=True)]
    monkeypatch.setattr(bench, "BEFORE_AFTER", tmp_path / "missing.md")
    args = type("A", (), {"repeats": 1, "steps": None, "device": "cpu"})()
    page = bench.book_page(rows, args, {"cpu": "a CPU"}, "today")
    assert "**1.40×** | ≥ 1.3× met" in page and "**1.10×** | reference, no target" in page
    assert "Every measured ratio reaches its target" in page  # the reference row is not a miss
    assert "Without bf16 (image processing (H/R/D), amp=False on cpu) the ratio is 1.10× (below the target)" in page
    assert "Results before and after" not in page
    (tmp_path / "ba.md").write_text("Before: x\n\n### null_embedding\n\n| row |\n")
    monkeypatch.setattr(bench, "BEFORE_AFTER", tmp_path / "ba.md")
    page = bench.book_page(rows, args, {"cpu": "a CPU"}, "today")
    assert "## Results before and after the speed work" in page and "\n### null_embedding" in page


def test_walls_only_rewrites_the_wall_times_and_keeps_the_measured_part(tmp_path, monkeypatch):
    bench = _load("bench")
    page = tmp_path / "performance.md"
    page.write_text("# Performance\n\nmeasured part\n\n## Per-notebook wall time\n\nstale table\n")
    monkeypatch.setattr(bench, "BOOK_PAGE", page)
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    (tmp_path / "data" / "results").mkdir(parents=True)
    (tmp_path / "data" / "results" / "tuning.json").write_text(json.dumps(
        {"wall_seconds": 120, "profile": "cpu", "device": "CPU (x)", "started": "today", "commit": "abc",
         "parameters": {"build": [{"parameters": "seed=0", "minutes": 50.9, "threads": 1, "device": "cpu:x"}]}}))
    bench.rewrite_walls()
    text = page.read_text()
    assert text.startswith("# Performance\n\nmeasured part\n\n## Per-notebook wall time")
    assert "stale table" not in text and "| tuning | cpu | CPU (x) | 2.0 min (120 s) |" in text
    assert "### tuning" in text and "| seed=0 | 50.9 | 1 | cpu:x |" in text
    page.write_text("# Performance\n")  # no section to rewrite: a clear error, the page untouched
    with pytest.raises(SystemExit, match="no '## Per-notebook wall time' section"):
        bench.rewrite_walls()
    assert page.read_text() == "# Performance\n"

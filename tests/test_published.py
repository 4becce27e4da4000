"""README's results section is what docs/results.json and docs/bench.json say (scripts/published.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def published():
    spec = importlib.util.spec_from_file_location("published", ROOT / "scripts" / "published.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_results_and_the_speed_table_are_the_files_results():
    for path, have, want in published().pairs():
        assert have == want, f"{path.name} differs from docs/results.json or docs/bench.json: run scripts/published.py"


def test_a_changed_measurement_changes_the_section(tmp_path):
    pub = published()
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copy(ROOT / "docs" / "bench.json", tmp_path / "docs" / "bench.json")
    shutil.copy(ROOT / "docs" / "speed.md", tmp_path / "docs" / "speed.md")
    results = json.loads((ROOT / "docs" / "results.json").read_text())
    first = next(iter(results["presets"].values()))["summary"]["test_accuracy"]
    first["mean"] = first["min"] = first["max"] = 0.1234
    (tmp_path / "docs" / "results.json").write_text(json.dumps(results))
    have, want = pub.load(tmp_path)
    assert have != want and "12.34%" in want


def test_each_row_names_its_cpu_and_command():
    _, want = published().load()
    results = json.loads((ROOT / "docs" / "results.json").read_text())
    bench = json.loads((ROOT / "docs" / "bench.json").read_text())
    assert want.count(results["machine"]["cpu"]) >= 1 and bench["gpumlp"]["machine"]["cpu"] in want
    assert results["command"] in want and bench["gpumlp"]["command"] in want
    assert want.count("| `gpumlp train") == len(results["presets"])
    sweep = json.loads((ROOT / "docs" / "sweep.json").read_text())  # the row of the recipe a sweep chose
    assert sweep["command"] in want and want.count("| `gpumlp sweep run") == (sweep["chosen"] is not None)


def test_the_sample_training_outputs_are_the_reference_runs_first_epochs():
    """README's `gpumlp train --epochs 5` and docs/cli.md's `--epochs 3` print what docs/results.json's
    `gpumlp train` run (seed 0, a constant lr) recorded for its first epochs: the same command, the
    same seed and the same batches, so the same losses and accuracies on the measured CPU."""
    import re

    results = json.loads((ROOT / "docs" / "results.json").read_text())
    run = next(r for r in results["presets"]["default"]["runs"] if r["seed"] == 0)
    assert run["config"]["schedule"] == "constant" and run["config"]["seed"] == 0
    line = re.compile(r"^epoch (\d+)/(\d+)  loss (\S+)  val loss (\S+)  val acc +(\S+)%", re.M)
    for doc, epochs in (("README.md", 5), ("docs/cli.md", 3)):
        text = (ROOT / doc).read_text()
        block = text[text.index(f"`gpumlp train --epochs {epochs}`") :]
        block = block[block.index("```\n") : block.index("```", block.index("```\n") + 4)]
        printed = line.findall(block)
        assert [int(m[0]) for m in printed] == list(range(1, epochs + 1)), doc
        for (epoch, total, loss, val_loss, val_acc), h in zip(printed, run["history"]):
            assert int(total) == epochs and int(epoch) == h["epoch"], doc
            want = (f"{h['train_loss']:.4f}", f"{h['val_loss']:.4f}", f"{100 * h['val_accuracy']:.2f}")
            assert (loss, val_loss, val_acc) == want, f"{doc}, epoch {epoch}: {want} in docs/results.json"

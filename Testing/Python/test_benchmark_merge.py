"""`braindiffseg benchmark merge`: propagation runs split over processes -> one results.json / table / plot; few-shot
runs with other seeds -> one JSON / table / plot per dataset (the output may be one of the inputs); first input wins;
bad inputs are exit code 2 with a message."""
from __future__ import annotations

import json
import logging

import pytest

from BrainDiffSegCLI import main

PNG = b"\x89PNG\r\n\x1a\n"


def _propagation_run(folder, records):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"machine": f"machine of {folder.name}", "records": records}))
    return folder


def _rec(case, k, method, wt):
    return {"case": case, "k": k, "method": method, "seconds": 1.0, "dice": {"WT": wt}, "hd95": {"WT": 2.0}}


def _fewshot_run(folder, dataset, seeds, ns=(1, 5), wt=0.5):
    folder.mkdir(parents=True, exist_ok=True)
    records = [{"dataset": dataset, "method": m, "n": n, "seed": s, "seconds_total": 2.0,
                "dice": {"WT": wt + 0.01 * s}, "hd95": {"WT": 3.0}, "hd95_undefined": {"WT": 0}}
               for s in seeds for n in ns for m in ("diffusion-mlp", "unet")]
    data = {"machine": "m", "dataset": dataset, "settings": {"seeds": list(seeds), "steps": 40}, "records": records}
    (folder / f"fewshot_{dataset.lower()}.json").write_text(json.dumps(data))
    return records


def test_merge_propagation_runs(tmp_path, capsys):
    a = _propagation_run(tmp_path / "k3", [_rec("Brats18_A", 3, "raw-mlp", 0.8), _rec("TCGA_X", 3, "raw-mlp", 0.6)])
    b = _propagation_run(tmp_path / "k1", [_rec("Brats18_A", 1, "raw-mlp", 0.7), _rec("TCGA_X", 3, "raw-mlp", 0.1)])
    out = tmp_path / "joined"
    assert main(["benchmark", "merge", "--out", str(out), str(a), str(b / "results.json")]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert [(r["case"], r["k"], r["dice"]["WT"]) for r in saved["records"]] == \
        [("Brats18_A", 3, 0.8), ("TCGA_X", 3, 0.6), ("Brats18_A", 1, 0.7)]  # the first run wins
    assert saved["machine"] == "machine of k3" and saved["merged_from"] == [str(a), str(b)]
    table = (out / "table.md").read_text()
    assert "### all cases (2 cases)" in table and "### LGG (1 cases)" in table
    assert "| raw-mlp | 1 | 1 |" in table and "| raw-mlp | 3 | 2 |" in table
    assert (out / "dice_vs_k.png").read_bytes()[:8] == PNG
    assert table in capsys.readouterr().out


def test_merge_fewshot_runs_into_one_of_the_inputs(tmp_path, capsys):
    main_run, other = tmp_path / "fewshot", tmp_path / "fewshot_s2"
    brats = _fewshot_run(main_run, "BraTS", (0, 1))
    lgg = _fewshot_run(main_run, "LGG", (0, 1))
    _fewshot_run(other, "BraTS", (2,))
    _fewshot_run(other, "LGG", (1, 2), wt=0.9)  # seed 1 again: the first input's records are kept
    assert main(["benchmark", "merge", "--out", str(main_run), str(main_run), str(other)]) == 0
    for dataset, first in (("brats", brats), ("lgg", lgg)):
        saved = json.loads((main_run / f"fewshot_{dataset}.json").read_text())
        assert sorted({r["seed"] for r in saved["records"]}) == [0, 1, 2]
        assert saved["settings"]["seeds"] == [0, 1, 2] and saved["settings"]["steps"] == 40
        assert saved["records"][:len(first)] == first and len(saved["records"]) == len(first) + 4
        assert "mean ± sd over 3 seeds [0, 1, 2]" in (main_run / f"fewshot_{dataset}.md").read_text()
        assert (main_run / f"fewshot_{dataset}.png").read_bytes()[:8] == PNG
    lgg_saved = json.loads((main_run / "fewshot_lgg.json").read_text())["records"]
    assert all(r["dice"]["WT"] < 0.9 for r in lgg_saved if r["seed"] == 1)
    printed = capsys.readouterr().out
    assert "### BraTS: mean ± sd over 3 seeds" in printed and "### LGG: mean ± sd over 3 seeds" in printed


def test_merge_single_fewshot_files(tmp_path):
    _fewshot_run(tmp_path / "a", "LGG", (0,))
    _fewshot_run(tmp_path / "b", "LGG", (1,), ns=(2,))
    out = tmp_path / "m"
    assert main(["benchmark", "merge", "--out", str(out), str(tmp_path / "a" / "fewshot_lgg.json"),
                 str(tmp_path / "b" / "fewshot_lgg.json")]) == 0
    recs = json.loads((out / "fewshot_lgg.json").read_text())["records"]
    assert sorted({(r["n"], r["seed"]) for r in recs}) == [(1, 0), (2, 1), (5, 0)]
    assert not (out / "fewshot_brats.json").exists()


@pytest.mark.parametrize("kind", ["mixed", "missing", "neither"])
def test_merge_refuses_bad_inputs(tmp_path, caplog, kind):
    run = _propagation_run(tmp_path / "p", [_rec("Brats18_A", 3, "raw-mlp", 0.8)])
    _fewshot_run(tmp_path / "f", "LGG", (0,))
    (tmp_path / "empty").mkdir()
    inputs = {"mixed": [run, tmp_path / "f"], "missing": [run, tmp_path / "nowhere"],
              "neither": [tmp_path / "empty"]}[kind]
    message = {"mixed": "not both", "missing": "nowhere", "neither": "neither a propagation run"}[kind]
    with caplog.at_level(logging.ERROR):
        assert main(["benchmark", "merge", "--out", str(tmp_path / "m")] + [str(p) for p in inputs]) == 2
    assert message in "\n".join(r.getMessage() for r in caplog.records)
    assert not (tmp_path / "m").exists()

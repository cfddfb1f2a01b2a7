"""Joining benchmark runs that were split over several processes (`braindiffseg benchmark merge`).

- propagation runs (folders with a `results.json`, e.g. one process per dataset or per k) -> one results.json,
  table.md and dice_vs_k.png;
- few-shot runs (`fewshot_<dataset>.json` files, or folders holding them, e.g. runs with other seeds or other N) ->
  one fewshot_<dataset>.json, .md and .png per dataset.
A record present in several inputs is taken from the first input that has it.
"""
from __future__ import annotations

import json
from pathlib import Path

from BrainDiffSegLib.errors import InputError

from .report import plot_dice_vs_k, write_table


def merge_runs(dirs: list[Path], out: Path) -> list[dict]:
    """Join the results.json of several propagation runs (e.g. one process per dataset) into one results.json,
    table.md and dice_vs_k.png in `out`; a (case, k, method, backbone, classifier seed) present in several runs is
    taken from the first. The runs' backbones (name -> checkpoint and provenance) are joined too."""
    records, seen, machines, backbones = [], set(), [], {}
    for d in dirs:
        data = json.loads((Path(d) / "results.json").read_text())
        machines.append(data["machine"])
        for name, desc in data.get("backbones", {}).items():
            backbones.setdefault(name, desc)
        for r in data["records"]:
            key = (r["case"], r["k"], r["method"], r.get("backbone"), r.get("seed"))
            if key not in seen:
                seen.add(key)
                records.append(r)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": machines[0], "merged_from": [str(d) for d in dirs],
                                                  "backbones": backbones, "records": records}, indent=1))
    write_table(records, out / "table.md")
    plot_dice_vs_k(records, out / "dice_vs_k.png")
    return records


def merge_fewshot(files: list[Path], out: Path) -> list[dict]:
    """Join the fewshot_<dataset>.json of runs of one dataset with other seeds (same settings otherwise) into one
    JSON, table and plot in `out`; a (method, N, seed) present in several files is taken from the first."""
    from .fewshot_report import plot_dice_vs_n, plot_validation_curves, write_fewshot_paired, write_fewshot_table

    data = [json.loads(Path(f).read_text()) for f in files]
    dataset = data[0]["dataset"]
    if any(d["dataset"] != dataset for d in data):
        raise InputError("merge_fewshot: the runs are of different datasets")
    records, seen = [], set()
    for d in data:
        for r in d["records"]:
            key = (r["method"], r["n"], r["seed"])
            if key not in seen:
                seen.add(key)
                records.append(r)
    merged = dict(data[0], records=records, merged_from=[str(f) for f in files])
    merged["settings"] = dict(merged["settings"], seeds=sorted({r["seed"] for r in records}))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"fewshot_{dataset.lower()}.json").write_text(json.dumps(merged, indent=1))
    write_fewshot_table(records, out / f"fewshot_{dataset.lower()}.md", dataset)
    plot_dice_vs_n(records, out / f"fewshot_{dataset.lower()}.png", dataset)
    write_fewshot_paired(records, out / f"fewshot_{dataset.lower()}_paired.md", dataset)
    plot_validation_curves(records, out / f"fewshot_{dataset.lower()}_curves.png", dataset)
    return records


def classify_inputs(paths: list[Path]) -> tuple[str, list[Path]]:
    """('propagation', run folders) or ('fewshot', fewshot_*.json files) for the given inputs, in their order.

    A folder with a results.json is a propagation run, a folder with fewshot_*.json files holds few-shot runs (all of
    them, sorted by name), a results.json or fewshot_*.json file stands for itself. Mixing the two kinds, missing
    paths and anything else are InputErrors."""
    kinds: dict[str, list[Path]] = {"propagation": [], "fewshot": []}
    for p in map(Path, paths):
        if p.is_dir() and (p / "results.json").is_file():
            kinds["propagation"].append(p)
        elif p.is_dir() and sorted(p.glob("fewshot_*.json")):
            kinds["fewshot"] += sorted(p.glob("fewshot_*.json"))
        elif p.is_file() and p.name == "results.json":
            kinds["propagation"].append(p.parent)
        elif p.is_file() and p.name.startswith("fewshot_") and p.suffix == ".json":
            kinds["fewshot"].append(p)
        elif not p.exists():
            raise InputError(f"{p}: no such file or folder")
        else:
            raise InputError(f"{p}: neither a propagation run (a folder with results.json) nor a few-shot run "
                             "(fewshot_<dataset>.json, or a folder with such files)")
    given = [k for k, v in kinds.items() if v]
    if len(given) != 1:
        raise InputError("give either propagation runs or few-shot runs to merge, not both" if given else
                         "nothing to merge")
    return given[0], kinds[given[0]]


def merge(paths: list[Path], out: Path) -> list[Path]:
    """Merge the given runs (see `classify_inputs`) into `out`; returns the Markdown tables written."""
    kind, inputs = classify_inputs(paths)
    out = Path(out)
    if kind == "propagation":
        merge_runs(inputs, out)
        return [out / "table.md"]
    by_dataset: dict[str, list[Path]] = {}
    for f in inputs:
        try:
            dataset = json.loads(f.read_text())["dataset"]
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{f}: not a few-shot result file ({exc})") from exc
        by_dataset.setdefault(dataset, []).append(f)
    for dataset, files in by_dataset.items():
        merge_fewshot(files, out)
    return [out / f"fewshot_{d.lower()}.md" for d in by_dataset]

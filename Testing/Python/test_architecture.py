"""The layering rules of docs/ARCHITECTURE.md, checked on every import statement of the code (imports inside functions
included), plus what the Slicer extension ships (CMake) and the file-length rule."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SRC = REPO / "BrainDiffSeg"
PACKAGES = ("BrainDiffSegLib", "BrainDiffSegService", "BrainDiffSegSlicer", "BrainDiffSegBench", "BrainDiffSegCLI",
            "BrainDiffSegWeb")
GUI = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "mrml", "PythonQt", "PySide6", "PyQt5", "PyQt6", "trame",
       "trame_slicer", "trame_server", "trame_client"}
OURS = set(PACKAGES) | {"BrainDiffSeg"}
ENGINE_THIRD_PARTY = {"torch", "numpy", "scipy", "nibabel", "skimage", "diffusers", "safetensors", "matplotlib"}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
MAX_LINES = 400


def _files(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file (relative imports stay inside the package)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _offenders(files: list[Path], forbidden: set[str]) -> dict[str, list[str]]:
    found = {}
    for path in files:
        bad = sorted(imported_roots(path) & forbidden)
        if bad:
            found[str(path.relative_to(REPO))] = bad
    return found


def test_every_package_exists_with_code():
    for package in PACKAGES:
        assert (SRC / package / "__init__.py").is_file(), package
        assert len(_files(package)) >= 2, package


def test_engine_imports_only_its_own_libraries():
    files = _files("BrainDiffSegLib")
    assert _offenders(files, GUI | (OURS - {"BrainDiffSegLib"})) == {}
    third_party = {str(p.relative_to(REPO)): sorted(imported_roots(p) - STDLIB - ENGINE_THIRD_PARTY - {"BrainDiffSegLib"})
                   for p in files}
    assert {k: v for k, v in third_party.items() if v} == {}


def test_engine_modules_the_slicer_module_reads_first_are_standard_library_only():
    for name in ("constants", "options", "errors"):
        path = SRC / "BrainDiffSegLib" / f"{name}.py"
        assert imported_roots(path) <= STDLIB, (name, imported_roots(path) - STDLIB)


def test_engine_at_run_time_loads_no_gui_module():
    code = ("import importlib, pkgutil, sys; sys.path.insert(0, sys.argv[1]); import BrainDiffSegLib as L; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(L.__path__, 'BrainDiffSegLib.')]; "
            "bad = [m for m in sys.modules if m.split('.')[0] in sys.argv[2].split(',')]; "
            "assert not bad, bad; print('ok')")
    run = subprocess.run([sys.executable, "-c", code, str(SRC), ",".join(sorted(GUI | OURS - {"BrainDiffSegLib"}))],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def test_slicer_module_never_imports_benchmarks_cli_or_web():
    files = _files("BrainDiffSegSlicer") + [SRC / "BrainDiffSeg.py"]
    assert _offenders(files, {"BrainDiffSegBench", "BrainDiffSegCLI", "BrainDiffSegWeb", "trame", "trame_slicer"}) == {}


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_service_package_has_no_front_end_and_its_server_stays_out_of_slicer():
    """BrainDiffSegService: the engine, FastAPI / uvicorn (the server) and h11 (the client); never Slicer, Qt, VTK, nor
    the benchmarks, the CLI or the web. The Slicer side uses its client modules only: the server (which imports the
    engine's torch work) runs in the service's own process."""
    service = _files("BrainDiffSegService")
    assert _offenders(service, GUI | {"BrainDiffSeg", "BrainDiffSegSlicer", "BrainDiffSegBench", "BrainDiffSegCLI",
                                      "BrainDiffSegWeb"}) == {}
    for path in service:
        extra = imported_roots(path) - STDLIB - {"BrainDiffSegLib", "BrainDiffSegService", "numpy", "h11"}
        if path.name == "server.py":
            extra -= {"fastapi", "starlette", "uvicorn", "torch"}
        assert not extra, (path.name, extra)
    slicer_side = _files("BrainDiffSegSlicer") + [SRC / "BrainDiffSeg.py"]
    used = {m for path in slicer_side for m in _imported_modules(path) if m.startswith("BrainDiffSegService")}
    assert used and "BrainDiffSegService.server" not in used, used
    for path in slicer_side:  # the panel's process never imports torch (the engine runs elsewhere)
        assert "torch" not in imported_roots(path), path.name


def test_qt_only_in_the_widget():
    """Qt in the panel (`widget`), the module's icon (`module`) and the one-sentence panel of a too old Slicer
    (`version`) only."""
    files = [p for p in _files("BrainDiffSegSlicer") if p.name not in ("widget.py", "module.py", "version.py")]
    assert _offenders(files, {"qt", "ctk", "PythonQt"}) == {}


def test_the_module_file_parses_on_python_3_9_and_checks_the_version_first():
    """Slicer 5.8 ships Python 3.9: the module file and the version check must parse there, so that an old Slicer
    shows a panel saying what it needs instead of a traceback."""
    for path in (SRC / "BrainDiffSeg.py", SRC / "BrainDiffSegSlicer" / "version.py",
                 SRC / "BrainDiffSegSlicer" / "__init__.py"):
        ast.parse(path.read_text(), str(path), feature_version=(3, 9))
    tree = ast.parse((SRC / "BrainDiffSeg.py").read_text())
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [n.module for n in imports] == ["__future__", "BrainDiffSegSlicer.version"], \
        "BrainDiffSeg.py must import nothing of ours before the version check"
    assert imported_roots(SRC / "BrainDiffSegSlicer" / "version.py") <= STDLIB | {"slicer", "qt"}


def test_benchmarks_never_import_the_slicer_side_web_or_cli():
    assert _offenders(_files("BrainDiffSegBench"), GUI | {"BrainDiffSeg", "BrainDiffSegSlicer", "BrainDiffSegCLI",
                                                          "BrainDiffSegWeb"}) == {}


def test_web_never_imports_benchmarks_cli_or_the_module_file():
    assert _offenders(_files("BrainDiffSegWeb"), {"BrainDiffSegBench", "BrainDiffSegCLI", "BrainDiffSeg"}) == {}


def test_the_module_file_is_thin():
    lines = (SRC / "BrainDiffSeg.py").read_text().splitlines()
    assert len(lines) <= 150, len(lines)


def test_no_long_file_without_a_stated_reason():
    long = {}
    for path in [p for package in PACKAGES for p in _files(package)] + [SRC / "BrainDiffSeg.py"]:
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if not re.search(r"^Length:", doc, re.MULTILINE):
                long[str(path.relative_to(REPO))] = n
    assert long == {}, f"files over {MAX_LINES} lines need a 'Length: <reason>' line in their docstring"


def test_cmake_ships_the_module_and_engine_only():
    text = (SRC / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert re.search(r"^\s*\$\{MODULE_NAME\}\.py\s*$", text, re.MULTILINE)
    for package in ("BrainDiffSegLib", "BrainDiffSegService", "BrainDiffSegSlicer"):
        listed = set(re.findall(rf"\b{package}/([\w/]+\.py)", text))
        present = {str(p.relative_to(SRC / package)) for p in _files(package)}
        assert listed == present, (package, sorted(present - listed), sorted(listed - present))
    for package in ("BrainDiffSegBench", "BrainDiffSegCLI", "BrainDiffSegWeb"):
        assert package not in text, f"{package} must not ship in the Slicer extension"
    assert "Resources/Icons" in text and "Resources/Models" in text
    assert "add_subdirectory(BrainDiffSeg)" in (REPO / "CMakeLists.txt").read_text()


@pytest.mark.parametrize("package", PACKAGES)
def test_package_docstring_names_its_job(package):
    doc = ast.get_docstring(ast.parse((SRC / package / "__init__.py").read_text())) or ""
    assert len(doc.split()) >= 8, package


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Our modules -> the modules of ours each imports (absolute and relative imports, inside functions too)."""
    paths = {_module_name(p): p for package in PACKAGES for p in _files(package)}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for candidate in candidates:
                while candidate and candidate not in paths:
                    candidate = candidate.rsplit(".", 1)[0] if "." in candidate else ""
                if candidate and candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules `start` imports, directly or through others."""
    todo, reached = [start], set()
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                todo.append(nxt)
    return reached


def test_modules_import_each_other_without_cycles():
    """No two modules need each other (imports inside functions count: a cycle there only hides the knot)."""
    graph = import_graph()
    assert sorted(m for m in graph if m in _reach(graph, m)) == []


def test_product_commands_never_import_the_benchmarks():
    """`propagate`, `inpaint` and `serve` run on a clinician's machine: what they use lives in the engine."""
    graph = import_graph()
    for command in ("BrainDiffSegCLI.propagate", "BrainDiffSegCLI.inpaint", "BrainDiffSegCLI.serve"):
        used = _reach(graph, command) | {command}
        assert not {m for m in used if m.startswith("BrainDiffSegBench")}, command


def test_engine_rooms_and_one_feature_seam():
    """The engine's rooms (propagation, inpainting, training) beside the shared modules; the feature extractor is
    built in one place (`propagation.volume.build_extractor`), and the feature sources never reach back into
    `propagate`."""
    lib = SRC / "BrainDiffSegLib"
    assert {p.name for p in lib.iterdir() if (p / "__init__.py").is_file()} >= {"propagation", "inpainting", "training"}
    assert not list(lib.glob("inpaint*.py")), "inpainting modules belong in BrainDiffSegLib/inpainting"
    graph = import_graph()
    for source in ("BrainDiffSegLib.propagation.cache", "BrainDiffSegLib.propagation.sources",
                   "BrainDiffSegLib.propagation.volume"):
        assert "BrainDiffSegLib.propagation.propagate" not in _reach(graph, source), source
    rooms = ("BrainDiffSegLib.propagation", "BrainDiffSegLib.inpainting", "BrainDiffSegLib.training")
    shared_into_rooms = {m for m, targets in graph.items() if m.startswith("BrainDiffSegLib.")
                         and not m.startswith(rooms) and any(t.startswith(rooms) for t in targets)}
    assert shared_into_rooms <= {"BrainDiffSegLib.jobs", "BrainDiffSegLib.results"}, shared_into_rooms
    builders = {}
    for path in _files("BrainDiffSegLib"):
        text = path.read_text()
        n = len(re.findall(r"(?<![\w.])(?:FeatureExtractor|extractor_class)\(", text)) + text.count("default_checkpoint()")
        if n:
            builders[str(path.relative_to(lib))] = n
    assert set(builders) <= {"propagation/volume.py", "resources.py", "model.py"}, builders

"""No code runs from data: recipes' values are never eval'd / exec'd, and no source file of the
project calls eval/exec/compile, an unsafe YAML loader, pickle, or torch.load without
``weights_only=True`` (checked on the syntax tree, so a new call site fails this test)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("lightning_gbd", "tvm_passes", "benchmarks", "scripts") for p in (ROOT / d).rglob("*.py"))
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_ATTRS = {
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("pickle", "load"),
    ("pickle", "loads"),
    ("cloudpickle", "load"),
    ("cloudpickle", "loads"),
    ("marshal", "loads"),
    ("shelve", "open"),
    ("np", "load"),
    ("numpy", "load"),
}


def unsafe_calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if isinstance(f, ast.Name) and f.id in FORBIDDEN_BUILTINS:
            yield f"{where} {f.id}()"
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            if (f.value.id, f.attr) in FORBIDDEN_ATTRS:
                kw = {k.arg: k.value for k in node.keywords}
                if (
                    f.attr == "load"
                    and f.value.id in ("np", "numpy")
                    and isinstance(kw.get("allow_pickle"), ast.Constant)
                    and kw["allow_pickle"].value is False
                ):
                    continue
                yield f"{where} {f.value.id}.{f.attr}()"
            if (f.value.id, f.attr) == ("torch", "load"):
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    yield f"{where} torch.load() without weights_only=True"


def test_the_scan_sees_the_sources_and_catches_a_bad_call(tmp_path):
    assert len(SOURCES) > 30
    bad = ROOT / "tests" / "_scan_probe.py"  # under ROOT so relative_to works; removed at once
    bad.write_text(
        "import torch, yaml\nx = eval('1')\ntorch.load('a')\nyaml.load(open('r'))\ntorch.load('b', weights_only=True)\n"
    )
    try:
        found = list(unsafe_calls(bad))
    finally:
        bad.unlink()
    assert [f.split(" ", 1)[1] for f in found] == ["eval()", "torch.load() without weights_only=True", "yaml.load()"]


def test_no_source_file_runs_code_from_data():
    found = [f for p in SOURCES for f in unsafe_calls(p)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "override",
    [
        ["--model.lr", "__import__('pathlib').Path('{mark}').touch() or 0.1"],
        ["--data.init_args.batch_size", "__import__('pathlib').Path('{mark}').touch() or 8"],
        ["--trainer.callbacks+=os.system", "--trainer.callbacks.init_args.command", "touch {mark}"],
    ],
)
def test_recipe_values_are_not_executed(tmp_path, override):
    mark = tmp_path / "pwned"
    args = [a.format(mark=mark) for a in override]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_gbd.app.cli",
            "fit",
            "--config",
            "recipes/lenet5_fmnist_gradual.yaml",
            "--trainer.max_steps",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("gbd:")], r.stderr[-2000:]
    assert not mark.exists()

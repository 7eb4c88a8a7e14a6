"""Packaging: the import root, matplotlib's own `cycler`, the console script, and both install modes.

matplotlib depends on a top-level package called `cycler`; stackcycler's folder `cycler/` is
installed as `stackcycler`, so both must import side by side in one environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import stackcycler

REPO = Path(__file__).resolve().parents[1]

IMPORT_CHECK = """
import json, stackcycler, stackcycler.drivers, stackcycler.protocols
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import cycler
assert callable(cycler.cycler), "matplotlib's cycler was shadowed"
plt.rc("axes", prop_cycle=cycler.cycler(color=["r", "g"]))
plt.plot([0, 1], [0, 1])
plt.gcf().savefig("plot.png")
print(json.dumps({"stackcycler": stackcycler.__file__, "drivers": stackcycler.drivers.__file__,
                  "protocols": stackcycler.protocols.__file__, "cycler": cycler.__file__}))
"""


def run_check(python: str, cwd: Path) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([python, "-c", IMPORT_CHECK], cwd=cwd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert (cwd / "plot.png").stat().st_size > 0
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_root_and_matplotlib_cycler_coexist_from_any_directory(tmp_path):
    paths = run_check(sys.executable, tmp_path)
    assert Path(paths["cycler"]).parent.name == "cycler"
    assert Path(paths["cycler"]).parent != Path(paths["stackcycler"]).parent
    assert Path(paths["stackcycler"]).read_text().startswith('"""stackcycler')


def test_matplotlib_cycler_is_not_stackcycler_in_this_process():
    import cycler
    import matplotlib

    assert callable(cycler.cycler)
    assert Path(cycler.__file__).resolve() != Path(stackcycler.__file__).resolve()
    assert matplotlib.__version__


def test_console_script_and_module_entry_point_report_the_version(tmp_path):
    script = Path(sysconfig.get_path("scripts")) / "cycler"
    assert script.is_file(), "the console script `cycler` is not installed"
    for command in ([str(script), "--version"], [sys.executable, "-m", "stackcycler", "--version"]):
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"cycler, version {stackcycler.__version__}"


def _environment_without_stackcycler(root: Path) -> Path:
    """A virtual environment that sees this one's packages except stackcycler itself."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    visible = root / "visible-packages"
    visible.mkdir()
    for site in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}:
        for entry in Path(site).iterdir():
            if not entry.name.lower().startswith(("stackcycler", "__editable__.stackcycler")) \
                    and not (visible / entry.name).exists():
                (visible / entry.name).symlink_to(entry)
    python = root / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    Path(own_site, "visible-packages.pth").write_text(str(visible) + "\n")
    return python


@pytest.mark.parametrize("editable", [False, True], ids=["pip install .", "pip install -e ."])
def test_project_installs_both_ways(tmp_path, editable):
    python = _environment_without_stackcycler(tmp_path / "venv")
    source = REPO if editable else tmp_path / "source"
    if not editable:  # build from a copy so the checkout is left untouched
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info",
                                                                      "__pycache__", ".pytest_cache"))
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
               "--no-build-isolation"] + (["-e"] if editable else []) + [str(source)]
    done = subprocess.run(install, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    where = tmp_path / "elsewhere"
    where.mkdir()
    paths = run_check(str(python), where)
    if editable:
        assert Path(paths["stackcycler"]) == REPO / "cycler" / "__init__.py"
        assert Path(paths["drivers"]) == REPO / "drivers" / "__init__.py"
        assert Path(paths["protocols"]) == REPO / "protocols" / "__init__.py"
    else:
        assert Path(paths["stackcycler"]).is_relative_to(tmp_path / "venv")
        assert Path(paths["stackcycler"]).parent.name == "stackcycler"
        assert Path(paths["drivers"]).parent.parent == Path(paths["stackcycler"]).parent
    # the package data (built-in protocols and benches) came along
    listing = subprocess.run([str(python), "-m", "stackcycler", "protocols"], cwd=where, capture_output=True, text=True)
    assert "capacity-check" in listing.stdout, listing.stderr
    benches = subprocess.run([str(python), "-m", "stackcycler", "benches"], cwd=where, capture_output=True, text=True)
    assert "sim-weak-layer" in benches.stdout, benches.stderr

"""The wheel: built from the checkout, installed into a fresh venv without the
source tree, it ships its SQL files and works through Celery's entry point.

The new venv gets the already-installed dependencies from the project's venv
through a ``.pth`` line naming that venv's site-packages. A plain path line
adds the directory to ``sys.path`` but does not run the ``.pth`` files inside
it, so the editable install of the checkout stays out: the test checks that
``rawbackend`` is imported from the new venv.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DIALECT_FOLDERS = ("sqlite", "postgresql", "mysql")
TIMEOUT = 120  # seconds, for each build or install step


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, **kwargs
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, args))} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


def _purelib(python: Path | str, env=None) -> Path:
    out = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env)
    return Path(out.stdout.strip())


def _clean_env() -> dict:
    """The environment without anything that would put the checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from the checkout."""
    outdir = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(ROOT)])
    wheels = list(outdir.glob("rawbackend-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv_python(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed; dependencies come from the project's venv."""
    venv = tmp_path_factory.mktemp("venv")
    env = _clean_env()
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", str(wheel)], env=env)
    site = _purelib(python, env)
    assert site.is_relative_to(venv), site
    (site / "project_venv_deps.pth").write_text(f"{_purelib(sys.executable, env)}\n")
    return python


def test_wheel_ships_the_sql_files(wheel):
    """Every dialect's SQL files are inside the wheel, under rawbackend/sql."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for dialect in DIALECT_FOLDERS:
        for stem in ("results", "schema", "migrate"):
            assert f"rawbackend/sql/{dialect}/{stem}.sql" in names, sorted(names)
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)
    entry_points = next(
        zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith("entry_points.txt")
    )
    assert "[celery.result_backends]" in entry_points
    assert "rawdb = rawbackend:DatabaseBackend" in entry_points


SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from celery import Celery

    import rawbackend
    from rawbackend.loader import sql_root

    app = Celery("wheeltest", set_as_current=False)
    app.conf.update(
        result_backend="rawdb+sqlite:///" + sys.argv[1],
        result_serializer="json",
        accept_content=["json"],
    )
    backend = app.backend
    backend.store_result("wheel-task", {"answer": 42}, "SUCCESS")
    meta = app.AsyncResult("wheel-task").get(timeout=10)
    root = sql_root()
    print(json.dumps({
        "backend_class": type(backend).__module__ + "." + type(backend).__qualname__,
        "rawbackend_file": rawbackend.__file__,
        "sql_root": str(root),
        "sqlite_files": sorted(p.name for p in (root / "sqlite").glob("*.sql")),
        "result": meta,
        "sys_path": sys.path,
    }))
    """
)


def test_installed_wheel_stores_and_reads(venv_python, tmp_path):
    """From the installed wheel, with no checkout around: the entry point
    resolves, the SQL is found inside the package, a result round-trips."""
    workdir = tmp_path / "empty"
    workdir.mkdir()
    script = tmp_path / "use_wheel.py"
    script.write_text(SCRIPT)
    out = _run(
        [str(venv_python), str(script), str(tmp_path / "results.db")],
        cwd=workdir, env=_clean_env(),
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    site = _purelib(venv_python, _clean_env())
    package = site / "rawbackend"
    assert Path(report["rawbackend_file"]) == package / "__init__.py", report
    assert not Path(report["rawbackend_file"]).is_relative_to(ROOT)
    assert Path(report["sql_root"]) == package / "sql"
    assert report["sqlite_files"] == [
        "chords.sql", "expiry.sql", "migrate.sql", "results.sql", "schema.sql", "stats.sql"
    ]
    assert report["backend_class"] == "rawbackend.backend.DatabaseBackend"
    assert report["result"] == {"answer": 42}
    assert str(ROOT) not in report["sys_path"]
    assert list(workdir.iterdir()) == []  # nothing written into the working directory


def test_installed_wheel_has_the_rawbackend_command(venv_python, tmp_path):
    """The console script comes with the wheel and runs from it."""
    script = venv_python.with_name("rawbackend")
    assert script.exists()
    out = _run([str(script), "schema", "--url", f"sqlite:///{tmp_path / 'r.db'}"],
               cwd=tmp_path, env=_clean_env())
    assert "CREATE TABLE IF NOT EXISTS \"celery_taskmeta\"" in out.stdout
    assert not (tmp_path / "r.db").exists()  # schema prints, creates nothing

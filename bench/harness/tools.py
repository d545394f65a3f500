"""The run's log line, and the tools it installs when they are missing."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness.constants import COMPARATOR, NODE_DIR


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_quiet(cmd: Sequence[str], *, timeout: float, cwd: Path | None = None) -> bool:
    try:
        done = subprocess.run(
            list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"  {cmd[0]} failed: {exc}")
        return False
    if done.returncode != 0:
        log(f"  {' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return done.returncode == 0


def ensure_apt(binary: str, package: str) -> str:
    """The path of ``binary``; installs the Debian ``package`` with apt-get when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    log(f"{binary} not found: installing the {package} package with apt-get")
    if not run_quiet(["apt-get", "install", "-y", package], timeout=600):
        run_quiet(["apt-get", "update"], timeout=600)
        run_quiet(["apt-get", "install", "-y", package], timeout=600)
    found = shutil.which(binary)
    if not found:
        raise SystemExit(f"error: {binary} is required; apt-get install -y {package} failed")
    return found


def ensure_node_modules() -> bool:
    """npm ci the comparator's pinned dependencies into bench/.node (ignored by git)."""
    if not shutil.which("node") or not shutil.which("npm"):
        ensure_apt("node", "nodejs")
        ensure_apt("npm", "npm")
    lock = COMPARATOR / "package-lock.json"
    manifest = COMPARATOR / "package.json"
    stamp = hashlib.sha256(manifest.read_bytes() + lock.read_bytes()).hexdigest()
    stamp_file = NODE_DIR / ".installed"
    if (
        stamp_file.exists()
        and stamp_file.read_text() == stamp
        and (NODE_DIR / "node_modules").is_dir()
    ):
        return True
    log("installing the comparator's npm packages into bench/.node (npm ci)")
    NODE_DIR.mkdir(exist_ok=True)
    shutil.copy(manifest, NODE_DIR / "package.json")
    shutil.copy(lock, NODE_DIR / "package-lock.json")
    ok = run_quiet(
        ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
        timeout=600,
    )
    if ok:
        stamp_file.write_text(stamp)
    return ok


def ensure_py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if Path(found).exists():
        return found
    log("py-spy not found: pip install py-spy")
    run_quiet([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], timeout=300)
    found = str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else shutil.which("py-spy")


def ensure_gunicorn() -> bool:
    """gunicorn, for the head-to-head's gunicorn rows (not a dependency of the service)."""
    import importlib.util

    if importlib.util.find_spec("gunicorn") is not None:
        return True
    log("gunicorn not found: pip install gunicorn")
    run_quiet([sys.executable, "-m", "pip", "install", "--quiet", "gunicorn"], timeout=300)
    importlib.invalidate_caches()
    return importlib.util.find_spec("gunicorn") is not None

"""The web never imports compute code: kernels, numpy, gmpy2, numba and the primes library stay in the workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPUTE = ("jobs.kernels", "numpy", "gmpy2", "numba", "primes")


def test_the_web_app_loads_no_compute_code() -> None:
    code = f"""
import sys
import rest, rest.wsgi  # rest.wsgi builds the app as gunicorn does
from rest import create_app
from rest.settings import Settings
app = create_app(settings=Settings(redis_url="redis://127.0.0.1:1/0"))
client = app.test_client()
assert client.get("/openapi.json").status_code == 200
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {COMPUTE!r} or m.startswith("jobs.kernels"))
print(loaded)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_the_worker_side_modules_are_the_only_importers_of_kernels() -> None:
    """Kernels are reached by dotted name (JobSpec.kernel), so no web-side module names one in an import."""
    web_side = [*ROOT.glob("rest/*.py"), *ROOT.glob("jobs/types/*.py"), *ROOT.glob("jobs/store/*.py"),
                ROOT / "jobs/service.py", ROOT / "jobs/sharing.py", ROOT / "jobs/settings.py"]
    offenders = [str(p.relative_to(ROOT)) for p in web_side
                 if "import jobs.kernels" in p.read_text() or "from jobs.kernels" in p.read_text()]
    assert offenders == []

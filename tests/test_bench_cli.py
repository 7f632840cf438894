"""`taskenv bench` needs matplotlib only to draw: without it (the `bench` extra not installed)
the command starts, and asking for a plot is refused with a one-line hint before anything runs."""

import subprocess
import sys

# The interpreter as it is without the `bench` extra: `import matplotlib` fails.
WITHOUT_MATPLOTLIB = "import sys; sys.modules['matplotlib'] = None; from taskenv.cli.main import app; app()"


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_MATPLOTLIB, "bench", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bench_starts_without_matplotlib():
    # A refused URL ends the run before any request: the command itself imported and ran.
    done = _bench("--url", "ftp://127.0.0.1:8000")
    assert "Traceback" not in done.stderr + done.stdout
    assert done.returncode == 2 and "must be http://" in done.stdout + done.stderr


def test_a_plot_without_matplotlib_is_a_one_line_hint(tmp_path):
    done = _bench("--plot", str(tmp_path / "b.png"))
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout
    assert "pip install 'taskenv[bench]'" in done.stdout + done.stderr
    assert not (tmp_path / "b.png").exists()

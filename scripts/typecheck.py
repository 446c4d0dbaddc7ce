"""Run mypy (configured in pyproject.toml); compare its errors with a baseline that may only shrink.

The baseline, scripts/mypy-baseline.txt, holds today's errors without line numbers (one per line,
sorted; repeats kept), so moving code does not change it. The check fails on any error the baseline
does not hold. When errors are fixed it says so and `--update` rewrites the baseline smaller.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "scripts" / "mypy-baseline.txt"
_ERROR = re.compile(r"^(?P<path>[^:\s]+\.py):\d+(?::\d+)?: error: (?P<message>.*)$")


def normalise(output: str) -> list[str]:
    """mypy's error lines as `path: error: message [code]`, sorted, without line numbers."""
    lines = []
    for line in output.splitlines():
        m = _ERROR.match(line.strip())
        if m:
            lines.append(f"{m['path']}: error: {m['message']}")
    return sorted(lines)


def run_mypy() -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty", "--hide-error-context"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    errors = normalise(proc.stdout)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not errors):
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"mypy failed to run (exit {proc.returncode})")
    return errors


def main(argv: list[str]) -> int:
    errors = run_mypy()
    if argv == ["--update"]:
        BASELINE.write_text("".join(f"{e}\n" for e in errors))
        print(f"mypy baseline: {len(errors)} errors written to {BASELINE.relative_to(ROOT)}")
        return 0
    if argv:
        raise SystemExit("usage: typecheck.py [--update]")
    baseline = Counter(BASELINE.read_text().splitlines()) if BASELINE.exists() else Counter()
    current = Counter(errors)
    new = current - baseline
    fixed = baseline - current
    for line in sorted(new.elements()):
        print(line)
    if new:
        print(
            f"mypy: {sum(new.values())} error(s) not in {BASELINE.relative_to(ROOT)}; fix them "
            "(the baseline may only shrink)"
        )
        return 1
    print(f"mypy: {len(errors)} errors, none new (baseline {sum(baseline.values())})")
    if fixed:
        print(
            f"mypy: {sum(fixed.values())} baseline error(s) fixed; shrink the baseline with "
            "`.venv/bin/python scripts/typecheck.py --update`"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

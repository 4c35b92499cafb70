"""Record a workload under the power-loss shim, build crash images, reopen each one.

`compile_shim` builds shim.c with gcc; `record` runs `tests.powerloss.workload` under it;
`check_images` builds the images of chosen crash points and reopens them in a child process
(`tests.powerloss.check`), restarted after an image that crashed it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.powerloss.image import CHOICES, Recording

REPO = Path(__file__).resolve().parents[2]
SHIM_SOURCE = Path(__file__).with_name("shim.c")
RUN_TIMEOUT_S = 120.0


def compile_shim(build_dir: Path) -> Path | None:
    """The shim as a shared library, or None if there is no gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    library = build_dir / "powerloss_shim.so"
    subprocess.run(
        [gcc, "-O1", "-shared", "-fPIC", "-o", str(library), str(SHIM_SOURCE), "-ldl"],
        check=True,
        capture_output=True,
        timeout=RUN_TIMEOUT_S,
    )
    return library


def record(shim: Path, root: Path, log_path: Path, writes: int) -> Recording:
    """Run the workload (`writes` puts) in `root` under the shim; its recording."""
    root.mkdir(parents=True)
    root = root.resolve()
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=str(shim),
        POWERLOSS_DIR=str(root),
        POWERLOSS_LOG=str(log_path),
    )
    subprocess.run(
        [sys.executable, "-m", "tests.powerloss.workload", str(root), str(writes)],
        check=True,
        cwd=REPO,
        env=env,
        timeout=RUN_TIMEOUT_S,
    )
    return Recording(log_path, root)


@dataclass(frozen=True)
class Outcome:
    """What reopening one image gave."""

    image: str
    seed: int
    crash_at: int
    choice: str
    outcome: str
    """"ok", "refused" or "violation" (see tests.powerloss.check)."""
    detail: str


def check_images(
    recording: Recording, seeds: list[int], points_per_seed: int, work_dir: Path
) -> list[Outcome]:
    """For each seed: crash points drawn with it, one image per point and choice; reopened."""
    jobs: list[dict[str, object]] = []
    meta: dict[str, tuple[int, int, str]] = {}
    for seed in seeds:
        rng = random.Random(seed)
        for crash_at in recording.crash_points(rng, points_per_seed):
            acked = recording.acknowledged(crash_at)
            for choice in CHOICES:
                image = work_dir / f"s{seed}-r{crash_at}-{choice}"
                recording.image(crash_at, choice, rng, image)
                jobs.append({"image": str(image), "acked": acked})
                meta[str(image)] = (seed, crash_at, choice)
    outcomes: list[Outcome] = []
    pending = jobs
    while pending:
        jobs_file = work_dir / f"jobs-{len(outcomes)}.json"
        jobs_file.write_text(json.dumps(pending))
        run = subprocess.run(
            [sys.executable, "-m", "tests.powerloss.check", str(jobs_file)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
        for line in lines:
            seed, crash_at, choice = meta[line["image"]]
            outcomes.append(
                Outcome(line["image"], seed, crash_at, choice, line["outcome"], line["detail"])
            )
        pending = pending[len(lines) :]
        if pending:  # the checker died on the next image
            image = str(pending[0]["image"])
            seed, crash_at, choice = meta[image]
            detail = f"reopening crashed the process (exit {run.returncode}): {run.stderr[-400:]}"
            outcomes.append(Outcome(image, seed, crash_at, choice, "violation", detail))
            pending = pending[1:]
    return outcomes

"""Write what a benchmark printed into its section of benchmarks/README.md.

Each script keeps its section between two markers of its own, so ``make benchmark``
rewrites the results it measured and leaves the rest of the page as it is.
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

import torch

README = Path(__file__).resolve().parent / "README.md"


def machine() -> str:
    """The run's date, machine and PyTorch, for the section's first line."""
    kernels = torch.backends.cpu.get_cpu_capability()
    return (f"{time.strftime('%Y-%m-%d')}, an {platform.machine()} CPU ({kernels} "
            f"kernels), torch {torch.__version__}")


class Results:
    """Print lines as a benchmark measures them, then keep them in the README."""

    def __init__(self, name: str):
        self.name, self.lines = name, []

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.extend(text.splitlines() or [""])

    def write(self, readme: Path = README) -> None:
        start, end = f"<!-- {self.name}:start -->", f"<!-- {self.name}:end -->"
        block = "\n".join([start, f"Measured on {machine()}:", "", "```text",
                           *self.lines, "```", end])
        text = readme.read_text() if readme.exists() else ""
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text)
        else:
            text = text.rstrip("\n") + f"\n\n## {self.name}\n\n{block}\n"
        readme.write_text(text)
        print(f"results written to {readme}")

"""Do the checked cells print the same thing on every CPU?

PyTorch picks its CPU kernels (plain C++, AVX2 or AVX-512) from the processor it
runs on, and each sums floats in its own order; the number of threads splits sums
differently again. A cell tagged ``nbval-check-output`` must print the same text
whatever the kernels and threads, or `make test` fails on someone else's machine.

This script executes notebooks under the smoke budgets once per setting
(``ATEN_CPU_CAPABILITY`` x thread count), collects the text that nbval compares for
every tagged cell, sanitized as nbval sanitizes it, and lists each cell that differs
between settings or from its committed output. Run it after changing a checked cell:

    python tests/portability.py notebooks/06_evaluation.ipynb
    python tests/portability.py            # every notebook and solution

`make test-portable` runs the notebooks under nbval in one setting unlike the
machine's own (``--environment`` prints it), so CI proves the outputs on every run.

It exits 1 when a cell differs. Settings the CPU cannot run are left out with a note
(a capability above the native one falls back to it silently).
"""

from __future__ import annotations

import argparse
import configparser
import itertools
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
CHECK_TAG = "nbval-check-output"
SANITIZE_FILE = REPO / "tests" / "nbval_sanitize.cfg"
CAPABILITIES = ("default", "avx2", "avx512")
THREADS = (1, 2)
# From the least to the most capable: a level is available when it is not above the
# native one.
LEVELS = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}
# Matrix products go through MKL and convolutions through oneDNN, which pick their
# kernels from the CPU on their own; these variables hold them to the same level as
# ATEN_CPU_CAPABILITY, as on a CPU that has no more.
LIBRARY_LEVELS = {
    "default": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}


def sanitizers() -> list[tuple[re.Pattern, str]]:
    """The regex/replace pairs of tests/nbval_sanitize.cfg, in file order."""
    parser = configparser.RawConfigParser()
    parser.read(SANITIZE_FILE)
    return [(re.compile(parser[section]["regex"]), parser[section]["replace"])
            for section in parser.sections()]


def checked_text(notebook: nbformat.NotebookNode, rules) -> dict[str, str]:
    """Cell id -> the sanitized text outputs of every tagged code cell."""
    texts = {}
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or CHECK_TAG not in cell.metadata.get("tags", []):
            continue
        parts = []
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                parts.append(output.get("data", {}).get("text/plain", ""))
            elif output.output_type == "error":
                parts.append(f"{output.ename}: {output.evalue}")
        text = "".join(parts)
        for pattern, replacement in rules:
            text = pattern.sub(replacement, text)
        texts[f"{index} ({cell.get('id', '?')})"] = text
    return texts


def native_level() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def other_setting() -> tuple[str, int]:
    """A kernel level and thread count unlike this machine's own, for make.

    The plain C++ kernels run on every CPU, so they differ from the native level
    wherever that is AVX2 or AVX-512. On a CPU whose native level is the plain one
    (no AVX2, or not x86) no other level can run, and one thread is what changes.
    """
    if native_level() == "DEFAULT":
        print("note: this CPU's native kernel level is already the plain one; only "
              "the thread count differs from make test", file=sys.stderr)
    return "default", 1


def setting_environment(capability: str, threads: int) -> dict[str, str]:
    """The variables that put a fresh process on one kernel level and thread count."""
    return {"ATEN_CPU_CAPABILITY": capability, **LIBRARY_LEVELS[capability],
            "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def execute(path: Path, capability: str, threads: int) -> nbformat.NotebookNode:
    """Run ``path`` under the smoke budgets in a kernel with the given setting."""
    notebook = nbformat.read(path, as_version=4)
    overrides = {**setting_environment(capability, threads), "VAE_COURSE_SMOKE": "1"}
    saved = {name: os.environ.get(name) for name in overrides}
    # The kernel inherits this process's environment when it starts.
    os.environ.update(overrides)
    try:
        client = NotebookClient(notebook, timeout=1800, kernel_name="python3",
                                allow_errors=True,
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return notebook


def first_difference(left: str, right: str) -> str:
    """The first line where two outputs part, as nbval would show it."""
    pairs = itertools.zip_longest(left.splitlines(), right.splitlines(),
                                  fillvalue="(no line)")
    for a, b in pairs:
        if a != b:
            return f"- {a}\n      + {b}"
    return f"- {left!r}\n      + {right!r}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--capabilities", nargs="+", default=list(CAPABILITIES))
    parser.add_argument("--threads", nargs="+", type=int, default=list(THREADS))
    parser.add_argument("--environment", action="store_true",
                        help="print NAME=value pairs for a setting unlike this "
                        "machine's own (make test-portable runs nbval under them)")
    args = parser.parse_args(argv)
    if args.environment:
        print(" ".join(f"{name}={value}" for name, value
                       in setting_environment(*other_setting()).items()))
        return 0
    paths = args.notebooks or sorted((REPO / "notebooks").rglob("*.ipynb"))
    paths = [path for path in paths if ".ipynb_checkpoints" not in path.parts]
    native = native_level()
    capabilities = [name for name in args.capabilities
                    if LEVELS[name.upper()] <= LEVELS.get(native, 0)]
    for name in sorted(set(args.capabilities) - set(capabilities)):
        print(f"note: this CPU's native level is {native}; {name} left out")
    settings = [(capability, threads) for capability in capabilities
                for threads in args.threads]
    rules = sanitizers()
    differing = 0
    for path in paths:
        committed = checked_text(nbformat.read(path, as_version=4), rules)
        if not committed:
            continue
        runs = {}
        for capability, threads in settings:
            started = time.perf_counter()
            runs[capability, threads] = checked_text(
                execute(path, capability, threads), rules)
            print(f"{path.name}: {capability}, {threads} thread(s) in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        for cell, expected in committed.items():
            outputs = {setting: texts.get(cell, "") for setting, texts in runs.items()}
            if len(set(outputs.values())) > 1:
                differing += 1
                print(f"DIFFERS across settings: {path.name} cell {cell}")
                baseline = outputs[settings[0]]
                for setting, text in outputs.items():
                    if text != baseline:
                        print(f"  {settings[0]} vs {setting}:\n      "
                              f"{first_difference(baseline, text)}")
            elif expected != next(iter(outputs.values())):
                differing += 1
                print(f"DIFFERS from committed (budget or stale output): {path.name} "
                      f"cell {cell}\n      "
                      f"{first_difference(expected, next(iter(outputs.values())))}")
    print(f"{differing} checked cell(s) differ")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())

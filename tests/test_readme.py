"""Every command the README and the docs/ pages show stays valid: each python script/module exists and
accepts the flags shown, and every Python snippet runs. (`make demo`/`make test` run in CI.)"""
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
# The README and the docs pages it links to: a command moved into docs/ stays checked.
DOCUMENTED = "\n".join([README, *(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md")))])

# Parse the arguments exactly as the script does, then stop before any work is done.
PARSE_ONLY = """
import argparse, functools, runpy, sys
depth = 0
def outermost(method):
    original = getattr(argparse.ArgumentParser, method)
    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        global depth
        depth += 1
        try:
            result = original(self, *args, **kwargs)
        finally:
            depth -= 1
        if depth == 0:
            if isinstance(result, tuple) and result[1]:
                print("unrecognised:", result[1])
                raise SystemExit(3)
            print("PARSED")
            raise SystemExit(0)
        return result
    setattr(argparse.ArgumentParser, method, wrapper)
for method in ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args"):
    outermost(method)
target, sys.argv = sys.argv[1], sys.argv[1:]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    sys.argv[0] = target
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def shell_commands(text):
    """The commands of the README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def project_invocations():
    """(script or module, args) for every documented command that runs a project entry point."""
    found = []
    for command in shell_commands(DOCUMENTED):
        words = shlex.split(command)
        if words[0] == "torchrun":
            start = next(i for i, w in enumerate(words) if w.endswith(".py"))
            words = ["python"] + words[start:]
        if words[0] != "python" or words[1] == "-c":
            continue
        if words[1] == "-m":
            found.append((words[2], words[3:]))
        else:
            found.append((words[1], words[2:]))
    return found


INVOCATIONS = project_invocations()


def test_the_readme_shows_every_entry_point():
    targets = {target for target, _ in INVOCATIONS}
    assert {"train.py", "test.py", "psnr_ssim.py", "calc_lpips.py", "param.py", "data.prepare_celeba",
            "data.make_lr", "utils.evaluation.results_table", "utils.evaluation.side_by_side"} <= targets
    assert README.index("make demo") < README.index("make test") < README.index("## Installation")


@pytest.mark.parametrize("target,args", INVOCATIONS, ids=[" ".join([t, *a])[:60] for t, a in INVOCATIONS])
def test_readme_command_parses(target, args):
    out = subprocess.run([sys.executable, "-c", PARSE_ONLY, target, *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "PARSED" in out.stdout, out.stdout + out.stderr


def test_readme_python_snippet_runs():
    snippets = re.findall(r"```python\n(.*?)```", DOCUMENTED, flags=re.S)
    assert snippets
    for snippet in snippets:
        out = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr

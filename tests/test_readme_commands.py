"""The READMEs run as written: every command in their shell blocks is run from the repository root,
and its exit status and the output the page shows are checked, so that a stale example fails here
rather than in front of the next newcomer.

A block is a command block when its fence says ``sh``/``shell``/``bash``/``console``, or when it has
no language and starts with ``$ ``. With ``$ `` prompts, the lines after a command are the output it
shows; ``...`` stands for lines left out. Commands that need a fleet (the demo's ports, its
``demo/`` work folder) run against a ``gpupack demo --keep --workdir`` this module starts; the few
that cannot run here are listed in ``NOT_RUN``, each with its reason.

The shown output is matched line by line, in order, runs of spaces free; outputs are changing
under other hands, so exact bytes are not the contract, the lines are. Numbers on a ``Time:``
line are free (they are timings), and so are numbers and model names in what a measuring command
prints about the demo's fleet: its peaks and which model the scheduler moves vary from run to run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from gpupack.triton.sample_models import seed_models
from tests.kept_demo import KeptDemo

REPO = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "deploy/README.md", "rules/README.md")
VENV_BIN = Path(sys.executable).parent

# Commands that are not run here, and why. Every other command in the pages runs.
NOT_RUN = {
    "make demo": "runs `gpupack demo`, which tests/test_demo.py runs; here its kept twin serves the fleet commands",
    "make test": "the whole test suite, this test included",
    "make test-fast": "a lane of the test suite, this test included",
    "MODEL_REPOSITORY=/srv/models docker compose -f deploy/compose.yaml up --build":
        "needs Docker with the NVIDIA Container Toolkit and a GPU",
    "gpupack plan --profile profile.yaml --demand demand.yaml --device-memory 16GiB --format json > plan.json":
        "the reader's profile and demand; tests/profiler/test_verify.py plans and verifies on real servers",
    "gpupack verify --plan plan.json --demand demand.yaml --profile profile.yaml --server http://scratch:8000 "
    "--duration 10s": "needs the reader's scratch Triton server; tests/profiler/test_verify.py verifies on a real one",
    "make containers": "builds the container images; tests/containers builds and runs the same stack",
    "curl -s 127.0.0.1:9090/api/v1/targets": "the container stack's Prometheus; tests/containers checks its targets",
    "sh deploy/podman/stack.sh down": "the container stack; tests/containers checks that `down` leaves nothing",
    "kubectl apply -k deploy/kubernetes": "needs a Kubernetes cluster; tests/deploy validates what it applies",
    "pip install .": "installs into the system Python, as root",
    "install -m 644 deploy/systemd/gpupack-*.service /etc/systemd/system/": "writes to /etc, as root",
    "install -D -m 644 deploy/systemd/gpupack.yaml /etc/gpupack/gpupack.yaml": "writes to /etc, as root",
    "install -D -m 644 deploy/policies.yaml /etc/gpupack/policies.yaml": "writes to /etc, as root",
    "systemctl daemon-reload": "changes the host's systemd; tests/deploy verifies the units",
    "systemctl enable --now gpupack-exporter gpupack-rules":
        "changes the host's systemd; tests/deploy verifies the units",
    # rules/README.md's synopsis: `run` is a daemon.
    "gpupack rules run --policies deploy/policies.yaml": "a daemon, until stopped; the kept demo runs `rules run` here",
    "gpupack rules run --policies deploy/policies.yaml --server t0=http://host:8000 --apply":
        "a daemon, until stopped, on the reader's servers; the kept demo runs `rules run --apply` here",
    "gpupack rules run --policies policies.yaml --exporter-url http://127.0.0.1:9478 --server "
    "triton-0=http://10.0.0.5:8000 --server triton-1=http://10.0.0.6:8000 --apply --max-moves 2 --cooldown 30m":
        "a daemon, until stopped, on the reader's servers; the kept demo runs `rules run --apply` here",
    "gpupack plan --profile profile.yaml --device-memory 80GiB --demand-from-prometheus http://prometheus:9090 "
    "--window 28d --step 1h --forecast-weeks 4 --headroom 10% --schedule --format json > week.json":
        "the reader's profile and Prometheus; tests/scheduler/demand/test_series_prometheus.py plans from a real one",
    "gpupack rules run --policies policies.yaml --exporter-url http://127.0.0.1:9478 --server "
    "triton-0=http://10.0.0.5:8000 --server triton-1=http://10.0.0.6:8000 --schedule week.json --lead 10m --apply":
        "a daemon, until stopped, on the reader's servers; tests/closedloop/test_schedule_triton.py follows a "
        "schedule on real ones",
}

# The demo itself (its output is the kept demo's), and what ties a command to the demo's fleet: its
# ports and its work folder, which stand in the pages for where the kept demo really is. What such a
# command prints is a measurement: its numbers and model names vary.
DEMO_COMMANDS = (".venv/bin/gpupack demo", ".venv/bin/gpupack demo --keep --workdir demo")
DEMO_WORDS = ("127.0.0.1:9478", "127.0.0.1:9479", "127.0.0.1:8080", "demo/gpupack.yaml")
_DEMO_FOLDER = re.compile(r"(?<![\w/.-])demo/")
_MODEL_NAMES = re.compile("|".join(sorted((re.escape(m.name) for m in seed_models()), key=len, reverse=True)))
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?")


@dataclass(frozen=True)
class Command:
    text: str  # as the page writes it, continuation lines joined, a trailing comment dropped
    shown: tuple[str, ...]  # the output the page shows after it (``$`` blocks only)


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    commands: tuple[Command, ...]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _without_comment(line: str) -> str:
    return re.sub(r"\s+#\s.*$", "", line).strip()


def _commands(lines: list[str]) -> Iterator[Command]:
    prompted = any(line.startswith("$ ") for line in lines)
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if prompted and not line.startswith("$ "):
            continue
        text = line[2:] if prompted else line
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        parts = [text]
        while parts[-1].rstrip().endswith("\\") and i < len(lines):
            parts[-1] = parts[-1].rstrip()[:-1]
            parts.append(lines[i].strip())
            i += 1
        shown = []
        while prompted and i < len(lines) and not lines[i].startswith("$ "):
            shown.append(lines[i])
            i += 1
        yield Command(" ".join(_without_comment(p) for p in parts if _without_comment(p)), tuple(shown))


def command_blocks(page: str, text: str | None = None) -> list[Block]:
    lines = (REPO / page).read_text().splitlines() if text is None else text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(```|~~~)\s*(\w*)", lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1))), len(lines))
        body = lines[i + 1:end]
        language = fence.group(2)
        first = next((line for line in body if line.strip()), "")
        if language in ("sh", "shell", "bash", "console") or (not language and first.startswith("$ ")):
            commands = tuple(_commands(body))
            if commands:
                blocks.append(Block(page, i + 1, commands))
        i = end + 1
    return blocks


def every_block() -> list[Block]:
    return [block for page in PAGES for block in command_blocks(page)]


def _line_pattern(line: str, measured: bool) -> re.Pattern[str]:
    free_numbers = measured or line.lstrip().startswith("Time:")
    pattern, position = [], 0
    names = _MODEL_NAMES if measured else None
    tokens = sorted([*(_NUMBER.finditer(line) if free_numbers else ()), *(names.finditer(line) if names else ())],
                    key=lambda m: m.start())
    for token in tokens:
        if token.start() < position:
            continue
        pattern.append(re.escape(line[position:token.start()]))
        pattern.append(r"[\d.e+-]+" if token.re is _NUMBER else r"\w+")
        position = token.end()
    pattern.append(re.escape(line[position:]))
    return re.compile(re.sub(r"(\\ )+|\s+", r"\\s+", "".join(pattern).strip()))


def missing_lines(shown: tuple[str, ...], output: str, measured: bool) -> list[str]:
    """The shown lines not found in the output: each run between ``...`` lines must appear whole and
    in order, and the runs in the order shown; blank lines do not count."""
    actual = [line.strip() for line in output.splitlines() if line.strip()]  # blank lines are layout
    runs: list[list[str]] = [[]]
    for line in shown:
        if line.strip() == "...":
            runs.append([])
        elif line.strip():
            runs[-1].append(line.strip())
    missing, start = [], 0
    for run in (r for r in runs if r):
        patterns = [_line_pattern(line, measured) for line in run]
        found = next((i for i in range(start, len(actual) - len(run) + 1)
                      if all(p.fullmatch(actual[i + k]) for k, p in enumerate(patterns))), None)
        if found is None:
            missing.extend(run)
        else:
            start = found + len(run)
    return missing


def needs_demo(command: Command) -> bool:
    return command.text in DEMO_COMMANDS or any(w in command.text for w in DEMO_WORDS)


@pytest.fixture(scope="module")
def kept_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeptDemo]:
    demo = KeptDemo(tmp_path_factory.mktemp("readme") / "demo")
    try:
        yield demo.serving()
    finally:
        demo.stop()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the pages call /tmp/: one folder for the module, so that a file one block writes is
    there for the next, as in the reader's shell."""
    return tmp_path_factory.mktemp("tmp")


def _substitutions(scratch: Path, demo: KeptDemo | None) -> list[tuple[re.Pattern[str], str]]:
    subs = [(re.compile(r"(?<![\w/])\.venv/bin/"), f"{VENV_BIN}/"), (re.compile(r"(?<![\w.])/tmp/"), f"{scratch}/")]
    if demo is not None:
        config = yaml.safe_load((demo.workdir / "gpupack.yaml").read_text())
        subs += [(re.compile(re.escape("127.0.0.1:9478")), config["exporter"]["listen"]),
                 (re.compile(re.escape("127.0.0.1:9479")), config["rules"]["listen"]),
                 (re.compile(re.escape("127.0.0.1:8080")), config["router"]["listen"]),
                 (_DEMO_FOLDER, f"{demo.workdir}/")]
    return subs


def _substituted(text: str, subs: list[tuple[re.Pattern[str], str]]) -> str:
    """Every substitution in one pass, so that what one puts in (a checkout under /tmp/, say) is
    never rewritten by the next."""
    either = re.compile("|".join(f"(?P<s{n}>{pattern.pattern})" for n, (pattern, _) in enumerate(subs)))
    return either.sub(lambda match: subs[int(str(match.lastgroup)[1:])][1], text)


def _runnable(block: Block) -> list[Command]:
    return [c for c in block.commands if c.text not in NOT_RUN]


def _marks(block: Block) -> list[pytest.MarkDecorator]:
    marks = []
    if any(needs_demo(c) for c in _runnable(block)):
        marks.append(pytest.mark.triton)
    return marks


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=_marks(b)) for b in every_block()])
def test_the_command_block_runs_as_written(block: Block, request: pytest.FixtureRequest, scratch: Path) -> None:
    runnable = _runnable(block)
    if not runnable:
        pytest.skip("; ".join(f"{c.text}: {NOT_RUN[c.text]}" for c in block.commands))
    demo = request.getfixturevalue("kept_demo") if any(needs_demo(c) for c in runnable) else None
    subs = _substitutions(scratch, demo)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("GPUPACK_CONFIG", None)
    for command in runnable:
        measured = needs_demo(command)
        shown = tuple(_substituted(line, subs) for line in command.shown)
        if command.text in DEMO_COMMANDS:
            assert demo is not None
            output, status = demo.output, 0  # the kept demo is this command, run by the fixture
        else:
            program = command.text.split()[0]
            if program in ("promtool", "kubectl", "curl") and not shutil.which(program):
                pytest.skip(f"{program} is not installed")
            result = subprocess.run(["bash", "-c", _substituted(command.text, subs)], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
            output, status = result.stdout, result.returncode
        assert status == 0, f"{block.id}: `{command.text}` exited with status {status}:\n{output}"
        missing = missing_lines(shown, output, measured)
        assert not missing, (f"{block.id}: `{command.text}` no longer prints, in this order:\n  "
                             + "\n  ".join(missing) + f"\nIt printed:\n{output}")


def test_every_command_not_run_is_still_in_the_pages() -> None:
    """An entry for a command the pages no longer show would hide nothing; it goes."""
    shown = {c.text for block in every_block() for c in block.commands}
    assert sorted(set(NOT_RUN) - shown) == []


def test_every_example_file_the_pages_name_is_shipped() -> None:
    """A command that names a file in the repository (``examples/...``, ``rules/examples/...``) needs it."""
    named = {word for block in every_block() for c in block.commands for word in c.text.split()
             if re.fullmatch(r"[\w.-]+/[\w./-]+\.(ya?ml|json)", word) and not word.startswith("demo/")}
    assert sorted(f for f in named if not (REPO / f).exists()) == []


@pytest.mark.parametrize(("shown", "printed", "measured", "missing"), [
    (("4 devices (proven optimal)",), "x\n6 devices (proven optimal)\n", False, ["4 devices (proven optimal)"]),
    (("a  b",), "a b\n", False, []),
    (("first", "...", "last"), "first\nmiddle\nlast\n", False, []),
    (("first", "last"), "first\nmiddle\nlast\n", False, ["first", "last"]),
    (("first", "", "last"), "first\n\n\nlast\n", False, []),
    (("last", "...", "first"), "first\nlast\n", False, ["first"]),
    (("Time: 0.61 s of the 10 s limit",), "Time: 1.20 s of the 10 s limit\n", False, []),
    (("moved segmentation_ct_liver: cpu:triton-0 -> cpu:triton-4 (1.0s)",),
     "moved segmentation_mri_brain_tumor: cpu:triton-0 -> cpu:triton-3 (1.1s)\n", True, []),
    (("cpu:triton-0  segmentation_ct_liver  1024  100%  violated",), "cpu:triton-0 segmentation_ct_liver 990 97% ok\n",
     True, ["cpu:triton-0  segmentation_ct_liver  1024  100%  violated"]),
])
def test_shown_output_is_matched_line_by_line(shown: tuple[str, ...], printed: str, measured: bool,
                                             missing: list[str]) -> None:
    assert missing_lines(shown, printed, measured) == missing


def test_commands_are_read_from_prompts_and_plain_shell_blocks() -> None:
    page = ("Text.\n```sh\nmake demo        # a comment\n# a whole-line comment\ncurl -s a \\\n  | grep b\n```\n"
            "```\n$ gpupack plan --profile p.yaml\ndevice  models\n...\n$ echo done\ndone\n```\n"
            "```yaml\npolicies: []\n```\n```\nplain output, no prompt\n```\n")
    blocks = command_blocks("README.md", page)
    assert [[(c.text, c.shown) for c in b.commands] for b in blocks] == [
        [("make demo", ()), ("curl -s a | grep b", ())],
        [("gpupack plan --profile p.yaml", ("device  models", "...")), ("echo done", ("done",))],
    ]

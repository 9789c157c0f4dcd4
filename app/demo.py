"""The whole gpupack loop on one machine, no GPU needed.

Real Triton servers stand in for GPUs (one CPU-only server per device, each with a memory
budget); the article's nine models (footprints scaled down 1/20) are loaded two per device at
random, as the article's naive placement does. The exporter measures them, the rules engine finds
the device over the 80% policy, and the scheduler moves models live until the fleet is healthy,
driving HAProxy in front of the fleet so that clients calling the router follow every move (without
haproxy installed the demo runs without a router, and says so). Every part runs as the same command
a user would start, from one config file. Ctrl-C, SIGTERM or SIGHUP stops everything the demo
started, at any point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gpupack.app.demo_stack import DEVICE_BUDGET, DEVICE_BUDGET_BYTES, POLICY_NAME, DemoError, DemoStack
from gpupack.config import ConfigFile
from gpupack.timing import WaitTimeout, wait_until
from gpupack.triton.launcher import TritonServer, triton_fleet
from gpupack.triton.sample_models import seed_models, write_model_repository
from gpupack.units import counted, format_mib

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# The article's "two per GPU at random", fixed so that the demo always shows its failure: liver and
# brain tumour share a device (the article's OOM risk) while breast and chest leave one mostly idle.
NAIVE_PLACEMENT = (
    ("segmentation_ct_liver", "segmentation_mri_brain_tumor"),
    ("classification_breast", "classification_chest"),
    ("segmentation_ct_colon_tumor", "segmentation_ct_pancreas"),
    ("segmentation_ct_spleen", "segmentation_mri_hippocampus"),
    ("classification_malaria",),
)


class _Stopped(BaseException):
    """A stop signal arrived. A BaseException, as KeyboardInterrupt is, so that no ``except
    Exception`` on the way swallows it and every ``finally`` stops what it started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


def _ignore_stop_signals() -> None:
    """While stopping: a second Ctrl-C must not cut the clean-up short and leave servers behind."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true",
                        help="keep the fleet, exporter and rules engine running until Ctrl-C, SIGTERM or "
                             "SIGHUP; the URLs they serve are printed, and written in the work folder's "
                             "gpupack.yaml")
    parser.add_argument("--workdir", metavar="DIR",
                        help="where to put models, config, state and logs (default: a temporary directory)")


def run(args: argparse.Namespace, config: ConfigFile | None) -> int:
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS}
    try:
        with _workdir(args.workdir) as workdir:
            return _Demo(workdir.resolve(), keep=args.keep).run()  # the config's paths hold from any folder
    except _Stopped as e:
        print(f"gpupack demo: stopped by {e}; everything it started is stopped", file=sys.stderr)
        return 128 + e.signum  # as a shell reports a command ended by that signal
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
    else:
        with tempfile.TemporaryDirectory(prefix="gpupack-demo-") as temporary:
            yield Path(temporary)


class _Demo:
    def __init__(self, workdir: Path, keep: bool) -> None:
        self.workdir = workdir
        self.keep = keep
        self.stack = DemoStack(workdir)
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {text}", flush=True)

    def run(self) -> int:
        models = seed_models()
        repository = write_model_repository(self.workdir / "models", models)
        names = [f"triton-{i}" for i in range(len(NAIVE_PLACEMENT))]
        budget_mib = DEVICE_BUDGET_BYTES // 2**20
        print(f"gpupack demo: {len(names)} CPU-only Triton servers stand in for {len(names)} GPUs of "
              f"{budget_mib} MiB each; the article's nine models, footprints scaled down 1/20.\n")
        self.say(f"starting {len(names)} Triton servers ...")
        try:
            with triton_fleet(repository, names, log_dir=self.workdir / "logs") as servers:
                try:
                    return self._with_fleet(servers)
                finally:
                    _ignore_stop_signals()
                    self.stack.stop()
        finally:
            _ignore_stop_signals()  # a stop during start-up: the fleet's own clean-up runs now

    def _with_fleet(self, servers: list[TritonServer]) -> int:
        self.say("loading two models per device at random, as the article's naive placement does")
        pool = ThreadPoolExecutor(max_workers=len(servers))  # one loader per server
        try:
            list(pool.map(lambda pair: [pair[0].load_model(m) for m in pair[1]], zip(servers, NAIVE_PLACEMENT)))
        finally:
            pool.shutdown(wait=False)  # on a stop, the servers go now; their loads fail with them
        config_path = self.stack.write_config(servers)
        if self.stack.router_off:
            self.say(f"router off: {self.stack.router_off}; clients call each Triton server directly")
        else:
            self.stack.start_router(config_path)
            self.say(f"router on {self.stack.router_url}  (HAProxy in front of the servers: clients call "
                     "/v2/models/<model>/infer there and follow every move)")
        self.say(f"exporter on {self.stack.exporter_url}  (/metrics, /api/v1/peaks)")
        self.stack.start("exporter", "--config", str(config_path), "exporter")
        self._wait_for_peaks(expected_models=sum(len(group) for group in NAIVE_PLACEMENT))

        print("\nBEFORE: the naive placement, judged against the 80% memory policy")
        before = self._evaluate(config_path)
        self._print_table(before, self._models_by_device())
        if not any(r["status"] == "violated" for r in before):
            raise DemoError("expected the naive placement to violate the 80% policy; it did not")

        self.say(f"rules engine on {self.stack.rules_url}  (/metrics, /api/v1/placement) with policy "
                 f"{POLICY_NAME} (max 80%, action: rebalance): the scheduler moves models live")
        self.stack.start("rules", "--config", str(config_path), "rules", "run", "--apply")
        self._wait_for_rebalance()

        for move in self._moves():
            print(f"  moved {move['model']}: {move['source']} -> {move['target']} "
                  f"(ready on the target {move['overlap_seconds']:.1f}s before leaving the source)")
        print("\nAFTER: the placement the scheduler moved to, judged against the same policy")
        after = self._evaluate(config_path)
        models_by_device = self._models_by_device()
        self._print_table(after, models_by_device)
        healthy = not any(r["status"] != "ok" for r in after)
        self.say(f"fleet {'healthy' if healthy else 'NOT healthy'}: {counted(len(models_by_device), 'device')} in use; "
                 f"every move is in the audit log, {self._audit_log.relative_to(self.workdir)} in the work folder")
        self._print_fewest_devices(config_path)
        self._print_pointers()
        if self.keep:
            self.stack.print_urls(servers, config_path)
            self._serve_until_stopped()
        return 0 if healthy else 1

    def _serve_until_stopped(self) -> None:
        """--keep: the demo has said what it had to; a stop signal now is the expected end, not a failure."""
        try:
            while all(p.poll() is None for _, p in self.stack.processes):
                time.sleep(1)
        except _Stopped as e:
            router = "" if self.stack.router_off else ", the router"
            self.say(f"stopping on {e}: the rules engine, the exporter{router} and the Triton servers")
            return
        self.stack.check_alive()

    def _wait_for_peaks(self, expected_models: int, timeout_seconds: float = 90) -> None:
        def all_measured() -> bool:
            self.stack.check_alive()
            with contextlib.suppress(requests.RequestException, ValueError):
                peaks = requests.get(f"{self.stack.exporter_url}/api/v1/peaks", timeout=2).json()
                loaded = [m for m in peaks.get("models", []) if m.get("loaded") and "gpu_memory" in m.get("peaks", {})]
                return len(loaded) >= expected_models
            return False

        try:
            wait_until(all_measured, timeout_seconds, "the exporter reporting every model", interval_seconds=0.5)
        except WaitTimeout as e:
            raise DemoError(f"the exporter did not report all models within {timeout_seconds:.0f}s") from e
        time.sleep(1)  # a few more samples, so each peak is a maximum and not a first reading
        self.say(f"exporter has peaks for all {expected_models} models")

    def _wait_for_rebalance(self, timeout_seconds: float = 180) -> None:
        reported_moves = 0

        def healthy_after_moves() -> bool:
            nonlocal reported_moves
            self.stack.check_alive()
            samples = self._rules_samples()
            moves = int(sum(s.value for s in samples if s.name == "gpupack_rebalance_moves_total"
                            and s.labels.get("result") == "succeeded"))
            if moves > reported_moves:
                self.say(f"scheduler: {counted(moves, 'model move')} done, each ready on its new device before "
                         "leaving the old one")
                reported_moves = moves
            violated = [s for s in samples if s.name == "gpupack_policy_violation" and s.value == 1]
            evaluated = any(s.name == "gpupack_policy_headroom_ratio" for s in samples)
            return bool(moves and evaluated and not violated)

        try:
            wait_until(healthy_after_moves, timeout_seconds, "the fleet rebalancing", interval_seconds=1.0)
        except WaitTimeout as e:
            raise DemoError(f"the fleet was not rebalanced within {timeout_seconds:.0f}s; "
                            f"see {self.workdir / 'logs'}") from e

    def _rules_samples(self) -> list[Sample]:
        try:
            text = requests.get(f"{self.stack.rules_url}/metrics", timeout=2).text
        except requests.RequestException:
            return []
        return [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    def _evaluate(self, config_path: Path) -> list[dict[str, Any]]:
        result = subprocess.run(
            [sys.executable, "-m", "gpupack", "--config", str(config_path), "rules", "evaluate",
             "--format", "json"], capture_output=True, text=True, timeout=60)
        if result.returncode not in (0, 1):
            raise DemoError(f"gpupack rules evaluate failed: {result.stderr.strip()}")
        return [r for r in json.loads(result.stdout)["results"] if r["policy"] == POLICY_NAME]

    @property
    def _audit_log(self) -> Path:
        return self.workdir / "state" / "scheduler" / "audit.jsonl"

    def _moves(self) -> list[dict[str, Any]]:
        """Completed moves from the scheduler's audit log, with how long both copies served."""
        if not self._audit_log.exists():
            return []
        events = [json.loads(line) for line in self._audit_log.read_text().splitlines() if line.strip()]
        ready = {e["step"]: e["time_seconds"] for e in events if e["event"] == "target_ready"}
        return [{**e, "overlap_seconds": e["time_seconds"] - ready[e["step"]]}
                for e in events if e["event"] == "source_unloaded" and e["step"] in ready]

    def _models_by_device(self) -> dict[str, list[str]]:
        """Where models are loaded now, as the exporter sees it."""
        peaks = requests.get(f"{self.stack.exporter_url}/api/v1/peaks", timeout=5).json()
        placement: dict[str, list[str]] = {}
        for entry in peaks["models"]:
            if entry.get("loaded"):
                placement.setdefault(entry["device"], []).append(entry["model"])
        return {device: sorted(models) for device, models in placement.items()}

    def _print_table(self, results: list[dict[str, Any]], models_by_device: dict[str, list[str]]) -> None:
        print(f"  {'device':<16} {'models':<58} {'peak MiB':>9} {'limit MiB':>9} {'use':>5}  status")
        for r in sorted(results, key=lambda r: r["device"]):
            models = ", ".join(models_by_device.get(r["device"], [])) or "-"
            value, limit = r.get("value"), r.get("limit")
            use = f"{value / DEVICE_BUDGET_BYTES:.0%}" if value is not None else "?"
            peak_mib, limit_mib = ("?" if v is None else format_mib(v) for v in (value, limit))
            print(f"  {r['device']:<16} {models:<58} {peak_mib:>9} {limit_mib:>9} {use:>5}  {r['status']}")
        print()

    def _print_fewest_devices(self, config_path: Path) -> None:
        """The article's case study 1 on the measured peaks: how few devices would do."""
        peaks = requests.get(f"{self.stack.exporter_url}/api/v1/peaks", timeout=5).json()
        baseline = max(d.get("server_baseline", {}).get("gpu_memory", 0) for d in peaks["devices"])
        profile = {
            "server_baseline": {"peak_gpu_memory_bytes": int(baseline)},
            "models": [{"model": m["model"], "peak_gpu_memory_bytes": int(m["peaks"]["gpu_memory"])}
                       for m in peaks["models"] if m.get("loaded") and "gpu_memory" in m.get("peaks", {})],
        }
        profile_path = self.workdir / "measured-profile.yaml"
        profile_path.write_text(yaml.safe_dump(profile, sort_keys=False))
        result = subprocess.run(
            [sys.executable, "-m", "gpupack", "plan", "--profile", str(profile_path), "--device-memory",
             DEVICE_BUDGET, "--policies", str(self.workdir / "policies.yaml")],
            capture_output=True, text=True, timeout=120)
        print("\nPLAN: the fewest devices the measured peaks need under the same policy "
              f"(gpupack plan --profile {profile_path.name})")
        print("  " + (result.stdout or result.stderr).strip().replace("\n", "\n  "))

    def _print_pointers(self) -> None:
        print(f"""
Point Prometheus at the exporter and the rules engine:
  scrape_configs:
    - job_name: gpupack-exporter
      static_configs: [{{targets: ["{self.stack.exporter_url.removeprefix('http://')}"]}}]
    - job_name: gpupack-rules
      static_configs: [{{targets: ["{self.stack.rules_url.removeprefix('http://')}"]}}]
Grafana dashboards: grafana/dashboards/*.json (provisioning in grafana/provisioning/);
alert rules: deploy/prometheus/rules/; the full stack: deploy/README.md.""")

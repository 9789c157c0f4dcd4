"""The GPU check behind ``scripts/gpu-check.sh``: gpupack's per-model figures against a real GPU.

One real tritonserver with two KIND_GPU models of known size that burn GPU time per request, one
``gpupack exporter --backend nvml`` and one ``gpupack profile``, each figure checked against a
truth measured apart from gpupack: the device memory an unload frees, the device's utilisation,
``nvidia-smi``, NVML's own process list, the highest per-process NVML reading. Prints one table,
writes ``gpu-check.json`` to ``$OUT`` when set, exits 1 when a check fails.

``--dry`` runs the same steps on a machine without a GPU (CPU instances, host backend) with the
NVML steps skipped, and runs gpupack's commands with only the modules the GPU machine has (its
own packages and the wheel folder's) importable, so a stray import of the solver shows here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterator

import psutil
import requests

from gpupack.testing.gpu_check_table import Check, format_table
from gpupack.testing.gpu_truth import DeviceTruth, find_libpython, hidden_modules_site
from gpupack.testing.highwater import BackendWatch
from gpupack.timing import WaitTimeout, wait_until
from gpupack.triton.launcher import TritonInstallation, TritonServer, find_tritonserver, free_port
from gpupack.triton.processes import backend_processes
from gpupack.triton.sample_models import SampleModel, write_model_repository

MIB = 2**20
LOAD_SECONDS = 10.0
MEMORY_TOLERANCE = 0.05
UTILIZATION_TOLERANCE = 0.10
SMI_TOLERANCE = 0.02


# Served by gpu_model.py, which reads footprint_bytes and compute_seconds from the config.
GPU_MODELS = (SampleModel("gpu_a", 1024 * MIB, compute_seconds=0.004, instance_kind="KIND_GPU"),
              SampleModel("gpu_b", 2048 * MIB, compute_seconds=0.004, instance_kind="KIND_GPU"))
DRY_MODELS = (SampleModel("gpu_a", 64 * MIB, compute_seconds=0.002),
              SampleModel("gpu_b", 128 * MIB, compute_seconds=0.002))


class Run:
    def __init__(self, dry: bool, work: Path, site: Path | None) -> None:
        self.dry = dry
        self.work = work
        self.site = site
        self.checks: list[Check] = []
        self.truth: DeviceTruth | None = None  # NVML, opened once the check runs

    def add(self, name: str, ok: bool | None, measured: str = "", truth: str = "", detail: str = "") -> bool:
        status = "skip" if ok is None else "pass" if ok else "fail"
        self.checks.append(Check(name, status, measured, truth, detail))
        return bool(ok)

    def skip_gpu(self, name: str) -> None:
        self.add(name, None, detail="dry run: NVML step skipped")

    def child_env(self) -> dict[str, str]:
        """gpupack's own commands: in a dry run, with what the GPU machine lacks hidden."""
        env = dict(os.environ)
        if self.dry and self.site is not None:
            hider = hidden_modules_site(self.work / "device-modules", self.site)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hider), env.get("PYTHONPATH")) if p)
        return env


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f} MiB"


def _within(measured: float, truth: float, tolerance: float) -> bool:
    return truth > 0 and abs(measured - truth) <= tolerance * truth


def _installation(run: Run) -> TritonInstallation | None:
    libpython = find_libpython()
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if libpython is None:
        run.add("libpython for the stub", False, detail=f"libpython{version}.so.1.0 not found: the Python-backend "
                f"stub embeds it; install libpython{version} (or a Python built with --enable-shared)")
        return None
    installation = find_tritonserver()
    stub = installation.backend_directory / "python" / "triton_python_backend_stub"
    run.add("libpython for the stub", True, str(libpython))
    run.add("Python backend laid out", stub.exists(), str(stub), detail=f"stub for Python {version}")
    return replace(installation, library_path=(*installation.library_path, libpython.parent))


def _exporter(run: Run, server: TritonServer) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(run.work / "exporter.log", "wb")  # noqa: SIM115 - the process keeps it
    process = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "gpupack", "exporter", "--server", f"{server.name}={server.http_url}",
         "--backend", "host" if run.dry else "nvml", "--listen", f"127.0.0.1:{port}",
         "--state-dir", str(run.work / "state"), "--sample-hz", "10"],
        stdout=log, stderr=subprocess.STDOUT, env=run.child_env())
    return process, f"http://127.0.0.1:{port}"


def _wait(predicate: Callable[[], object], timeout_seconds: float, what: str) -> bool:
    """Whether ``predicate`` came true in time; an exporter that does not answer yet is a no."""
    def answered() -> object:
        try:
            return predicate()
        except requests.RequestException:
            return None

    try:
        wait_until(answered, timeout_seconds, what, interval_seconds=0.2)
    except WaitTimeout:
        return False
    return True


def _current(exporter_url: str) -> dict[str, dict]:
    document = requests.get(f"{exporter_url}/api/v1/peaks", timeout=5).json()
    return {e["model"]: e for e in document["models"] if e.get("loaded") and "gpu_memory" in e.get("current", {})}


def _series(exporter_url: str, name: str) -> dict[str, float]:
    """``{labels text: value}`` of one metric family from the exporter's /metrics."""
    values = {}
    for line in requests.get(f"{exporter_url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name):].rsplit(" ", 1)
            values[labels] = float(value)
    return values


@contextlib.contextmanager
def _load(server: TritonServer, models: tuple[SampleModel, ...]) -> Iterator[None]:
    """Closed-loop requests to every model at once while the caller samples."""
    stop = threading.Event()
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}

    def drive(model: SampleModel) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                session.post(f"{server.http_url}/v2/models/{model.name}/infer", json=body, timeout=30)
                # Idle three times as long as busy: the device is far from saturated, so the
                # per-model figures and the device's can disagree visibly.
                stop.wait(3 * model.compute_seconds)

    threads = [threading.Thread(target=drive, args=(m,), daemon=True) for m in models]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def check_utilization(run: Run, server: TritonServer, exporter_url: str, models: tuple[SampleModel, ...]) -> None:
    """Only scrapes where every model's figure is its own process's count: apportioned figures split
    the device's utilisation, so they would add up to it by construction."""
    sums, devices, scrapes = [], [], 0
    started = time.monotonic()
    with _load(server, models):
        time.sleep(2.0)  # the exporter's rates need a few samples of steady load
        while time.monotonic() - started < LOAD_SECONDS:
            per_model = _series(exporter_url, "gpupack_model_utilization_ratio")
            device = _series(exporter_url, "gpupack_device_utilization_ratio")
            scrapes += 1
            ours = [v for k, v in per_model.items() if 'source="process"' in k
                    and any(f'model="{m.name}"' in k for m in models)]
            if len(ours) == len(models):
                sums.append(sum(ours))
                devices.append(max(device.values(), default=0.0))
            time.sleep(0.5)
    model_sum, device_mean = sum(sums) / max(1, len(sums)), sum(devices) / max(1, len(devices))
    name = "per-model utilisation sums to device"
    measured, truth = f"{model_sum:.0%} (sum of {len(models)} models)", f"{device_mean:.0%} (device)"
    if run.dry:
        run.add(name, None, measured, truth, "dry run: CPU time, not judged")
    elif len(sums) < scrapes / 2:
        run.add(name, False, measured, truth, f"source=process in only {len(sums)} of {scrapes} scrapes: "
                "NVML gave too few per-process samples")
    elif device_mean < 0.2:
        run.add(name, False, measured, truth, "too little load to tell")
    else:
        run.add(name, abs(model_sum - device_mean) <= UTILIZATION_TOLERANCE, measured, truth,
                f"within {UTILIZATION_TOLERANCE * 100:.0f} points; {len(sums)} of {scrapes} scrapes")


def check_device_series(run: Run, exporter_url: str) -> None:
    if run.truth is None:
        run.skip_gpu("device memory used vs nvidia-smi")
        return
    try:
        smi = run.truth.smi_memory_used_bytes()
    except (OSError, subprocess.SubprocessError) as e:
        run.add("device memory used vs nvidia-smi", False, detail=f"nvidia-smi did not answer: {e}"[:300])
        return
    exported = _series(exporter_url, "gpupack_device_memory_used_bytes")
    for uuid, used in smi.items():
        value = next((v for k, v in exported.items() if f'device="{uuid}"' in k), None)
        ok = value is not None and _within(value, used, SMI_TOLERANCE)
        run.add(f"device memory used vs nvidia-smi ({uuid[:12]})", ok, _mib(value), _mib(used),
                f"within {SMI_TOLERANCE:.0%}")
    if not smi:
        run.add("device memory used vs nvidia-smi", False, detail="nvidia-smi listed no GPU")


def check_process_list(run: Run, server: TritonServer) -> None:
    if run.truth is None:
        run.skip_gpu("NVML lists the stubs' PIDs")
        return
    stubs = {p.pid for p in backend_processes(server.pid)}
    listed = set(run.truth.process_memory_bytes())
    missing = stubs - listed
    run.add("NVML lists the stubs' PIDs", bool(stubs) and not missing, f"{len(stubs & listed)}/{len(stubs)} stubs",
            f"NVML lists {sorted(listed) or 'none'}",
            f"hidden from NVML (sandbox?): {sorted(missing)}; per-process figures cannot be checked" if missing else "")


def _used_bytes(run: Run, server: TritonServer) -> int:
    if run.truth is not None:
        return run.truth.device_memory_used_bytes()
    return sum(_rss(p) for p in [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)])


def _settled_used_bytes(run: Run, server: TritonServer) -> int:
    """The driver frees a context's memory just after its process exits: read until it stops moving."""
    previous = _used_bytes(run, server)
    for _ in range(20):
        time.sleep(0.5)
        current = _used_bytes(run, server)
        if current == previous:
            return current
        previous = current
    return previous


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.Error:
        return 0


def check_unload_deltas(run: Run, server: TritonServer, exporter_url: str, models: tuple[SampleModel, ...]) -> None:
    current = _current(exporter_url)
    for model in models:
        entry = current.get(model.name, {})
        attributed, source = entry.get("current", {}).get("gpu_memory"), entry.get("source")
        pids = {p.pid for p in backend_processes(server.pid) if p.model == model.name}
        before = _used_bytes(run, server)
        server.unload_model(model.name)
        _wait(lambda: not pids & {p.pid for p in backend_processes(server.pid)}, 60, f"{model.name}'s stubs exiting")
        freed = before - _settled_used_bytes(run, server)
        name = f"{model.name} memory vs unload delta"
        if source != "process":
            run.add(name, False, _mib(attributed), _mib(freed), f"source is {source!r}, not 'process'")
        else:
            run.add(name, _within(attributed, freed, MEMORY_TOLERANCE), _mib(attributed), _mib(freed),
                    f"within {MEMORY_TOLERANCE:.0%}; source=process")


def check_profile(run: Run, server: TritonServer, model: SampleModel) -> None:
    out = run.work / "profile.yaml"
    read = run.truth.process_memory if run.truth is not None else None
    watch = BackendWatch(server.pid, read, 0.05) if read is not None else BackendWatch(server.pid)
    with watch:
        result = subprocess.run(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "gpupack", "profile", "--server", server.http_url, "--models", model.name,
             "--backend", "host" if run.dry else "nvml", "--batch", "1", "--concurrency", "1,2",
             "--duration", "3s", "--warmup", "1s", "--out", str(out)],
            capture_output=True, text=True, timeout=180, env=run.child_env())
    (run.work / "profile.log").write_text(result.stdout + result.stderr)
    name = f"profile {model.name}: peak vs highest {'VmHWM' if run.dry else 'NVML per-process'}"
    if result.returncode != 0:
        run.add(name, False, detail=f"gpupack profile exited {result.returncode}: {result.stderr.strip()[-300:]}")
        return
    from gpupack.domain import Resource  # noqa: PLC0415 - after the run, as a user reads the profile
    from gpupack.profiles import load_profile  # noqa: PLC0415

    peak = load_profile(out).models[0].peak(Resource.GPU_MEMORY)
    truth = watch.highest.get(model.name)
    run.add(name, truth is not None and _within(peak, truth, MEMORY_TOLERANCE), _mib(peak), _mib(truth),
            f"within {MEMORY_TOLERANCE:.0%}")


def check(run: Run) -> None:
    if not run.dry:
        run.truth = DeviceTruth()
    installation = _installation(run)
    if installation is None:
        return
    models = DRY_MODELS if run.dry else GPU_MODELS
    repository = write_model_repository(run.work / "models", models, Path(__file__).with_name("gpu_model.py"))
    server = TritonServer(repository, name="gpu-check", installation=installation,
                          log_path=run.work / "tritonserver.log")
    with server.start(timeout_seconds=120):
        for model in models:
            server.load_model(model.name, timeout_seconds=180)
        run.add("tritonserver with the models", True, f"{len(models)} models",
                "KIND_CPU (dry run)" if run.dry else "KIND_GPU")
        exporter, exporter_url = _exporter(run, server)
        try:
            if not _wait(lambda: len(_current(exporter_url)) == len(models), 60, "the exporter attributing both models"):
                tail = " | ".join((run.work / "exporter.log").read_text(errors="replace").splitlines()[-3:])
                run.add("exporter attributes both models", False, detail=f"exporter.log ends: {tail}"[:400])
                return
            time.sleep(1.0)
            check_process_list(run, server)
            check_device_series(run, exporter_url)
            check_utilization(run, server, exporter_url, models)
            check_unload_deltas(run, server, exporter_url, models)
        finally:
            exporter.terminate()
            exporter.wait(timeout=30)
        check_profile(run, server, models[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="no GPU: CPU instances, NVML steps skipped")
    parser.add_argument("--site", type=Path, help="where the wheel folder was installed (hides the rest in --dry)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        run = Run(args.dry, Path(work), args.site)
        try:
            check(run)
        except Exception as e:  # noqa: BLE001 - the table must say what broke, whatever it was
            run.add("the check ran to its end", False, detail=f"{type(e).__name__}: {e}"[:400])
            for log in ("tritonserver.log", "exporter.log"):
                if (run.work / log).exists():
                    print(f"--- {log} (last lines)\n" + "\n".join((run.work / log).read_text(errors="replace").splitlines()[-15:]))
        if os.environ.get("OUT"):  # what the next session needs to fix a failure, from a machine it cannot reach
            for log in ("tritonserver.log", "exporter.log", "profile.log"):
                if (run.work / log).exists():
                    text = (run.work / log).read_bytes()[-2 * MIB:]
                    Path(os.environ["OUT"], f"gpu-check-{log}").write_bytes(text)
    passed = all(c.status != "fail" for c in run.checks)
    facts = {"python": sys.version.split()[0], **(run.truth.facts() if run.truth is not None else {})}
    print(", ".join(f"{key}: {value}" for key, value in facts.items()))
    print(format_table(run.checks))
    print(f"\n{'dry run' if args.dry else 'GPU check'}: {'PASSED' if passed else 'FAILED'} "
          f"in {time.monotonic() - started:.0f}s")
    if os.environ.get("OUT"):
        document = {"mode": "dry" if args.dry else "gpu", "passed": passed, "seconds": round(time.monotonic() - started),
                    "facts": facts, "checks": [asdict(c) for c in run.checks]}
        Path(os.environ["OUT"], "gpu-check.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

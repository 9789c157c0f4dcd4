"""Start a small fleet of real Triton servers on this machine, load the article's nine models
(footprints scaled down 1/20, host memory standing in for GPU memory) and show what each costs."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from gpupack.config import ConfigFile
from gpupack.testing import seed_models, triton_fleet, write_model_repository
from gpupack.triton_processes import backend_processes
from gpupack.units import format_mib


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", type=int, default=3, metavar="N", help="Triton servers to start (default: 3)")


def run(args: argparse.Namespace, config: ConfigFile | None) -> int:
    models = seed_models()
    with tempfile.TemporaryDirectory(prefix="gpupack-demo-") as workdir:
        repository = write_model_repository(Path(workdir) / "models", models)
        names = [f"triton-{i}" for i in range(args.servers)]
        print(f"starting {len(names)} Triton servers over {repository} ...", flush=True)
        started = time.monotonic()
        with triton_fleet(repository, names, log_dir=Path(workdir) / "logs") as servers:
            for index, model in enumerate(models):
                server = servers[index % len(servers)]
                server.load_model(model.name)
                print(f"  loaded {model.name} on {server.name}", flush=True)
            footprints = {m.name: m.footprint_bytes for m in models}
            print()
            print(f"{'server':<10} {'url':<24} {'model':<30} {'configured MiB':>14} {'measured MiB':>12}")
            for server in servers:
                for process in sorted(backend_processes(server.pid), key=lambda p: p.model):
                    rss = psutil.Process(process.pid).memory_info().rss
                    print(
                        f"{server.name:<10} {server.http_url:<24} {process.model:<30} "
                        f"{format_mib(footprints[process.model]):>14} {format_mib(rss):>12}"
                    )
            print(f"\nfleet up in {time.monotonic() - started:.1f}s; measured = the model's backend process RSS,"
                  " which includes ~30 MiB of Python-backend stub")
        print("all servers stopped")
    return 0

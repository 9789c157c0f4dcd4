"""`gpupack rebalance`: live rebalancing (not built yet)."""

from __future__ import annotations

import argparse

from gpupack.config import ConfigFile
from gpupack.errors import GpupackError


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, config: ConfigFile | None) -> int:
    raise GpupackError("'gpupack rebalance' is not available in this release yet")

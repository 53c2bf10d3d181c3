"""`midus demo`: the whole paper pipeline on an embedded default (no network, no GPU).

    from midus.demo import preset, run_demo
    report = run_demo(preset("quick"), "runs/demo-quick")
"""

from .base import BaseSettings, build_base
from .pipeline import run_demo
from .report import DemoReport
from .settings import PRESETS, DemoSettings, preset

__all__ = ["BaseSettings", "DemoReport", "DemoSettings", "PRESETS", "build_base", "preset", "run_demo"]

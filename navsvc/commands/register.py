"""`navsvc register`: register the preoperative MRI to an intraoperative CT or fluoroscopy (offline)"""

from __future__ import annotations

import argparse
from typing import Any

from navsvc.commands import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("register", help="register the preoperative MRI to an intraoperative CT or fluoroscopy (offline) [not built yet]")
    p.set_defaults(func=not_built("register", 5, "the registration pipeline"))

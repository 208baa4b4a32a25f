"""`ztun cleanup`: remove what a crashed ztun or `ztun demo` left behind."""

from __future__ import annotations

import logging

from . import netns
from .demo import PREFIX

log = logging.getLogger("ztun")


def cleanup() -> int:
    removed = 0
    for name in netns.list_names(PREFIX):
        netns.remove(name)
        log.info("removed namespace %s", name)
        removed += 1
    print(f"ztun cleanup: removed {removed} namespace(s)")
    return 0

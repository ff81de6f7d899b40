"""OpenIGTLink target streaming: targets out to robots and navigation systems, queries in.

Public API::

    from navsvc.streaming import Target, TargetState, IgtlServer, StreamConfig

See docs/openigtlink.md for the contract with integrators.
"""

from navsvc.streaming.client import IgtlClient
from navsvc.streaming.server import ClientStats, IgtlServer, StreamConfig
from navsvc.streaming.targets import Target, TargetState, drill_frame_lps, target_pose

__all__ = ["ClientStats", "IgtlClient", "IgtlServer", "StreamConfig", "Target", "TargetState",
           "drill_frame_lps", "target_pose"]

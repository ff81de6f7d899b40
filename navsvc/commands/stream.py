"""`navsvc stream`: serve fixed targets over OpenIGTLink for hardware bring-up"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "stream", help="serve fixed targets over OpenIGTLink for hardware bring-up",
        description="Serve fixed targets (no registration; NavStatus says state 'bringup') to "
                    "OpenIGTLink subscribers, for bringing up a robot or navigation system.")
    p.add_argument("--targets", required=True, help="targets JSON (see docs/openigtlink.md)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=18944, help="port (default 18944; 0 picks one)")
    p.add_argument("--frame", choices=("lps", "ras", "device"), default="lps",
                   help="output frame: CT LPS, CT RAS (3D Slicer) or the device frame")
    p.add_argument("--calibration", help="T_device_from_ct transform file (.h5/.tfm) for --frame device")
    p.add_argument("--fiducials-ct", help="fiducials in the CT (.mrk.json) to compute T_device_from_ct")
    p.add_argument("--fiducials-device", help="the same fiducials touched with the device (.mrk.json)")
    p.add_argument("--max-fre-mm", type=float, default=1.0, help="refuse a calibration above this FRE")
    p.add_argument("--refresh-hz", type=float, default=20.0, help="periodic refresh rate (default 20)")
    p.add_argument("--allow", action="append", default=None, metavar="IP[/BITS]",
                   help="allowed client address or network; repeatable (default: localhost only)")
    p.add_argument("--reference-name", default="Reference", help="name of the reference frame in device names")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (default: Ctrl-C)")
    p.set_defaults(func=run)


def _calibration(args: argparse.Namespace) -> Any:
    from navsvc.errors import InputError

    if args.calibration and (args.fiducials_ct or args.fiducials_device):
        raise InputError("give either --calibration or --fiducials-ct/--fiducials-device, not both")
    if args.calibration:
        from navsvc.transforms import RigidTransform, read_transform

        tx = read_transform(args.calibration, "device", "ct")
        if not isinstance(tx, RigidTransform):
            raise InputError(f"{args.calibration}: expected a rigid transform for T_device_from_ct")
        return tx
    if bool(args.fiducials_ct) != bool(args.fiducials_device):
        raise InputError("--fiducials-ct and --fiducials-device go together")
    if args.fiducials_ct:
        import numpy as np

        from navsvc.calibration import calibrate_from_fiducials
        from navsvc.markups import read_points

        ct, dev = read_points(args.fiducials_ct), read_points(args.fiducials_device)
        missing = sorted(set(ct) ^ set(dev))
        if missing:
            raise InputError(f"fiducial labels must match in both files; unpaired: {missing}")
        labels = sorted(ct)
        result = calibrate_from_fiducials(np.array([ct[k] for k in labels]), np.array([dev[k] for k in labels]),
                                          max_fre_mm=args.max_fre_mm, labels=labels)
        print(f"calibration: {len(labels)} fiducials, FRE RMS {result.fre_mm_rms:.3f} mm, "
              f"max {result.fre_mm_max:.3f} mm", flush=True)
        return result.T_device_from_ct
    return None


def run(args: argparse.Namespace) -> int:
    import threading
    import time

    from navsvc.streaming import IgtlServer, StreamConfig, TargetState
    from navsvc.streaming.files import load_targets_json

    targets = load_targets_json(args.targets)
    config = StreamConfig(host=args.host, port=args.port, refresh_hz=args.refresh_hz,
                          allow=tuple(args.allow or ("127.0.0.1", "::1")), output_frame=args.frame,
                          T_device_from_ct=_calibration(args), reference_name=args.reference_name)
    state = TargetState(None, "bringup", None, targets, time.time(),
                        reason="fixed bring-up targets from " + str(args.targets))
    server = IgtlServer(config)
    server.publish(state)
    port = server.start()
    print(f"serving {len(targets)} bring-up target(s) on {args.host}:{port} "
          f"(frame {args.frame}, refresh {args.refresh_hz} Hz); Ctrl-C to stop", flush=True)
    try:
        threading.Event().wait(args.duration if args.duration > 0 else None)
    finally:
        server.stop()
    return 0

"""`navsvc case`: talk to a running service: create, load-plan, register, approve, reject,
cancel, status, calibrate, audit.

Connection: ``--address`` (or NAVSVC_ADDRESS, default 127.0.0.1:50051) and a token:
``--token`` (or NAVSVC_TOKEN), or ``--data-dir DIR --role ROLE`` to read the tokens a local
service generated in DIR/tokens.json. ``--tls-ca`` (and ``--tls-cert``/``--tls-key`` for
mutual TLS) for a TLS service.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from navsvc.errors import ConfigError, InputError


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "case", help="talk to a running service: create, load-plan, register, approve, status, calibrate",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=os.environ.get("NAVSVC_ADDRESS", "127.0.0.1:50051"))
    p.add_argument("--token", default=os.environ.get("NAVSVC_TOKEN"))
    p.add_argument("--data-dir", type=Path, help="read the token for --role from DIR/tokens.json")
    p.add_argument("--role", choices=("viewer", "technician", "surgeon"), default="technician")
    p.add_argument("--tls-ca", type=Path, help="CA certificate of the service (enables TLS)")
    p.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, help="client key (mutual TLS)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    cmds = p.add_subparsers(dest="case_command", metavar="ACTION", required=True)

    c = cmds.add_parser("create", help="create a case")
    c.add_argument("--label", default="", help="free text, no patient identifiers")
    c.set_defaults(func=run, action=_create)

    c = cmds.add_parser("load-plan", help="load a plan with its MRI and segmentation")
    c.add_argument("case_id")
    c.add_argument("--plan", type=Path, required=True)
    c.add_argument("--mri", type=Path, required=True)
    c.add_argument("--labels", type=Path, required=True)
    c.add_argument("--server-paths", action="store_true",
                   help="the paths are on the server (under its roots); default: upload the local files")
    c.set_defaults(func=run, action=_load_plan)

    c = cmds.add_parser("register", help="start a registration and follow its progress")
    c.add_argument("case_id")
    c.add_argument("--ct", type=Path, required=True)
    c.add_argument("--server-paths", action="store_true", help="--ct is a path on the server")
    c.add_argument("--option", action="append", default=[], metavar="NAME=JSON",
                   help="registration option override, e.g. --option backend='\"elastix\"'")
    c.add_argument("--no-wait", action="store_true", help="return once started")
    c.set_defaults(func=run, action=_register)

    c = cmds.add_parser("approve", help="approve a registration (surgeon)")
    c.add_argument("registration_id")
    c.add_argument("--reason", default="", help="override reason, required for a WARN verdict")
    c.set_defaults(func=run, action=_approve)

    c = cmds.add_parser("reject", help="reject a registration (surgeon); withdraws its targets")
    c.add_argument("registration_id")
    c.add_argument("--reason", required=True)
    c.set_defaults(func=run, action=_reject)

    c = cmds.add_parser("cancel", help="cancel a running registration")
    c.add_argument("registration_id")
    c.set_defaults(func=run, action=_cancel)

    c = cmds.add_parser("status", help="list cases, or show a case / registration, and the targets")
    c.add_argument("id", nargs="?", help="a case id or registration id")
    c.set_defaults(func=run, action=_status)

    c = cmds.add_parser("fetch", help="download a registration's result files (QA picture, transforms, ...)")
    c.add_argument("registration_id")
    c.add_argument("names", nargs="*", help="file names (default: all; see `fetch REG --list`)")
    c.add_argument("--out", type=Path, default=Path("."), help="folder to write into (default: here)")
    c.add_argument("--list", action="store_true", help="only list the available files")
    c.set_defaults(func=run, action=_fetch)

    c = cmds.add_parser("calibrate", help="set T_device_from_ct of a case")
    c.add_argument("case_id")
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--matrix", help="16 comma-separated values, row-major 4x4 T_device_from_ct")
    g.add_argument("--ct-fiducials", type=Path, help="Slicer markups with the fiducials in the CT")
    c.add_argument("--device-fiducials", type=Path,
                   help='JSON {"name": [x, y, z], ...} of the same fiducials in the device frame (mm)')
    c.set_defaults(func=run, action=_calibrate)

    c = cmds.add_parser("audit", help="print the audit log")
    c.add_argument("--case", default="")
    c.add_argument("--limit", type=int, default=100)
    c.set_defaults(func=run, action=_audit)


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    if args.data_dir is not None:
        path = args.data_dir / "tokens.json"
        try:
            return str(json.loads(path.read_text())[args.role])
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise ConfigError(f"cannot read the {args.role} token from {path}: {exc}") from exc
    raise ConfigError("no token: pass --token, set NAVSVC_TOKEN, or --data-dir DIR --role ROLE")


def connect(args: argparse.Namespace) -> Any:
    from navsvc.server.client import NavClient

    def read(p: Path | None) -> bytes | None:
        return p.read_bytes() if p is not None else None

    return NavClient(args.address, _token(args), root_cert=read(args.tls_ca), client_key=read(args.tls_key),
                     client_cert=read(args.tls_cert))


def run(args: argparse.Namespace) -> int:
    import grpc

    from navsvc.server.client import nav_error_from_rpc

    client = connect(args)
    try:
        return int(args.action(client, args) or 0)
    except grpc.RpcError as exc:
        raise nav_error_from_rpc(exc) from None
    finally:
        client.close()


def _out(args: argparse.Namespace, msg: Any, text: str) -> None:
    from google.protobuf.json_format import MessageToDict

    if args.json:
        sys.stdout.write(json.dumps(MessageToDict(msg, preserving_proto_field_name=True), indent=2) + "\n")
    else:
        sys.stdout.write(text + "\n")


def _create(client: Any, args: argparse.Namespace) -> int:
    from navsvc.server.pb import navsvc_pb2 as pb

    case = client.call("CreateCase", pb.CreateCaseRequest(label=args.label))
    _out(args, case, case.case_id)
    return 0


def _load_plan(client: Any, args: argparse.Namespace) -> int:
    from navsvc.server.pb import navsvc_pb2 as pb

    refs = {k: client.file_ref(args.case_id, getattr(args, k), args.server_paths) for k in ("plan", "mri", "labels")}
    plan = client.call("LoadPlan", pb.LoadPlanRequest(case_id=args.case_id, **refs))
    lines = [f"plan {plan.plan_id} loaded into case {plan.case_id}"] + [
        f"  {t.name}: target ({t.target_lps.x:.1f}, {t.target_lps.y:.1f}, {t.target_lps.z:.1f}) LPS mm (MRI), "
        f"diameter {t.diameter_mm:.1f} mm, depth {t.depth_mm:.1f} mm" for t in plan.trajectories]
    _out(args, plan, "\n".join(lines))
    return 0


def parse_options(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InputError(f"--option: expected NAME=JSON, got {item!r}")
        out[name] = value
    return out


def follow(client: Any, registration_id: str, quiet: bool = False) -> Any:
    """Follow a registration's watch stream with a progress bar; return the final registration."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from navsvc.server.pb import navsvc_pb2 as pb

    stream = client.stream("WatchRegistration", pb.WatchRegistrationRequest(registration_id=registration_id))
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), transient=False, disable=quiet) as bar:
        task = bar.add_task("queued", total=1.0)
        for ev in stream:
            bar.update(task, completed=ev.fraction, description=f"{ev.stage}: {ev.message}"[:70])
    return client.call("GetRegistration", pb.GetRegistrationRequest(registration_id=registration_id))


def describe_registration(r: Any) -> str:
    from navsvc.server.pb import navsvc_pb2 as pb

    lines = [f"registration {r.registration_id} (case {r.case_id}): {pb.RegistrationState.Name(r.state)}, "
             f"decision {pb.Decision.Name(r.decision)}"]
    if r.error:
        lines.append(f"  error: {r.error}")
    if r.qa.verdict:
        lines.append(f"  QA {r.qa.verdict}" + (f": {'; '.join(r.qa.reasons)}" if r.qa.reasons else ""))
        for k, v in sorted(r.qa.figures.items()):
            lines.append(f"    {k} = {v:.3f}")
        if r.qa.picture_path:
            lines.append(f"  QA picture: {r.qa.picture_path}")
    if r.timings_s:
        lines.append("  timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in r.timings_s.items()))
    return "\n".join(lines)


def _register(client: Any, args: argparse.Namespace) -> int:
    from navsvc.server.pb import navsvc_pb2 as pb

    ct = client.file_ref(args.case_id, args.ct, args.server_paths)
    reg = client.call("StartRegistration", pb.StartRegistrationRequest(
        case_id=args.case_id, ct=ct, options=parse_options(args.option)))
    if args.no_wait:
        _out(args, reg, reg.registration_id)
        return 0
    final = follow(client, reg.registration_id, quiet=args.json)
    _out(args, final, describe_registration(final))
    return 0 if final.state == pb.SUCCEEDED else 7


def _approve(client: Any, args: argparse.Namespace) -> int:
    from navsvc.server.pb import navsvc_pb2 as pb

    r = client.call("ApproveRegistration", pb.ApproveRegistrationRequest(
        registration_id=args.registration_id, override_reason=args.reason))
    _out(args, r, describe_registration(r))
    return 0


def _reject(client: Any, args: argparse.Namespace) -> int:
    from navsvc.server.pb import navsvc_pb2 as pb

    r = client.call("RejectRegistration", pb.RejectRegistrationRequest(
        registration_id=args.registration_id, reason=args.reason))
    _out(args, r, describe_registration(r))
    return 0


def _cancel(client: Any, args: argparse.Namespace) -> int:
    from navsvc.server.pb import navsvc_pb2 as pb

    r = client.call("CancelRegistration", pb.CancelRegistrationRequest(registration_id=args.registration_id))
    _out(args, r, f"cancel requested for {r.registration_id}")
    return 0


def describe_targets(t: Any) -> str:
    if t.state != "approved":
        return f"targets: none ({t.reason})"
    lines = [f"targets from registration {t.registration_id} (case {t.case_id}, QA {t.qa_verdict}):"]
    for x in t.targets:
        lines.append(f"  {x.name}: target ({x.target_lps.x:.2f}, {x.target_lps.y:.2f}, {x.target_lps.z:.2f}) "
                     f"entry ({x.entry_lps.x:.2f}, {x.entry_lps.y:.2f}, {x.entry_lps.z:.2f}) CT LPS mm, "
                     f"diameter {x.diameter_mm:.1f} mm")
    return "\n".join(lines)


def _status(client: Any, args: argparse.Namespace) -> int:
    from navsvc.server.pb import navsvc_pb2 as pb

    targets = client.call("GetTargets", pb.GetTargetsRequest())
    if not args.id:
        cases = client.call("ListCases", pb.ListCasesRequest())
        lines = [f"{c.case_id}  {'ACTIVE ' if c.active else ''}{c.label!r} plan={c.plan_id or '-'} "
                 f"registration={c.registration_id or '-'}" for c in cases.cases] or ["no cases"]
        _out(args, cases, "\n".join(lines + [describe_targets(targets)]))
    elif args.id.startswith("reg-"):
        r = client.call("GetRegistration", pb.GetRegistrationRequest(registration_id=args.id))
        _out(args, r, describe_registration(r))
    else:
        c = client.call("GetCase", pb.GetCaseRequest(case_id=args.id))
        _out(args, c, f"{c.case_id} {c.label!r}: plan={c.plan_id or '-'} registration={c.registration_id or '-'} "
                      f"active={c.active} calibration={c.calibration_id or '-'}\n" + describe_targets(targets))
    return 0


def _fetch(client: Any, args: argparse.Namespace) -> int:
    from navsvc.server.pb import navsvc_pb2 as pb

    listing = next(iter(client.stream("GetResultFile", pb.GetResultFileRequest(
        registration_id=args.registration_id), timeout_s=60)))
    if args.list:
        _out(args, listing, "\n".join(listing.available))
        return 0
    written = [client.fetch_result(args.registration_id, name, args.out) for name in (args.names or listing.available)]
    sys.stdout.write("\n".join(str(p) for p in written) + "\n")
    return 0


def _calibrate(client: Any, args: argparse.Namespace) -> int:
    from navsvc.server.pb import navsvc_pb2 as pb

    if args.matrix:
        try:
            values = [float(v) for v in args.matrix.replace(" ", "").split(",")]
        except ValueError as exc:
            raise InputError(f"--matrix: expected 16 comma-separated numbers: {exc}") from exc
        req = pb.SetCalibrationRequest(case_id=args.case_id, T_device_from_ct=pb.Matrix4x4(values=values))
    else:
        from navsvc.markups import read_points

        if args.device_fiducials is None:
            raise InputError("--ct-fiducials needs --device-fiducials (JSON of the same names)")
        ct = read_points(args.ct_fiducials)
        try:
            dev = json.loads(args.device_fiducials.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{args.device_fiducials}: not readable JSON: {exc}") from exc
        missing = sorted(set(ct) ^ set(dev))
        if missing:
            raise InputError(f"fiducial names differ between the files: {missing}")
        pairs = [pb.FiducialPair(name=n, ct_lps=pb.Point3(x=ct[n][0], y=ct[n][1], z=ct[n][2]),
                                 device=pb.Point3(x=dev[n][0], y=dev[n][1], z=dev[n][2])) for n in sorted(ct)]
        req = pb.SetCalibrationRequest(case_id=args.case_id, fiducials=pb.FiducialList(pairs=pairs))
    cal = client.call("SetCalibration", req)
    _out(args, cal, f"calibration {cal.calibration_id}: FRE {cal.fre_mm_rms:.3f} mm RMS over "
                    f"{cal.fiducial_count} fiducials" if cal.fiducial_count else
                    f"calibration {cal.calibration_id}: matrix set")
    return 0


def _audit(client: Any, args: argparse.Namespace) -> int:
    from navsvc.server.pb import navsvc_pb2 as pb

    resp = client.call("ListAudit", pb.ListAuditRequest(case_id=args.case, limit=args.limit))
    lines = [f"{e.seq:5d} {e.actor} ({e.role}) {e.action} {e.case_id} {e.subject_id} {e.detail}"
             for e in resp.entries]
    _out(args, resp, "\n".join(lines) or "no entries")
    return 0

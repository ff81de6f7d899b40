"""`navsvc inspect FILE...`: check images, label maps, transforms and markups and describe them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "inspect", help="check and describe image, segmentation, transform or markups files"
    )
    p.add_argument("files", nargs="+", type=Path, help="NIfTI/NRRD/MHA/DICOM folder, .h5/.tfm, .mrk.json")
    p.add_argument("--labels", metavar="SPEC", help="treat images as segmentations, e.g. femur=1,necrosis=2,pelvis=3")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from navsvc import imaging, markups, transforms

    for path in args.files:
        name = path.name.lower()
        if name.endswith(".mrk.json"):
            for node in markups.read_markups(path):
                print(f"{path}: {node.type} {node.name!r}, {len(node.points)} points (LPS mm)")
                for cp in node.points:
                    print(f"    {cp.label:>20s}  {cp.position_lps[0]:9.2f} {cp.position_lps[1]:9.2f} {cp.position_lps[2]:9.2f}")
        elif name.endswith((".h5", ".hdf5", ".tfm")):
            tx = transforms.read_transform(path)
            print(f"{path}: {tx!r}")
        elif args.labels:
            spec = imaging.LabelSpec.parse(args.labels)
            seg = imaging.read_label_map(path, spec, required=("femur",))
            counts = imaging.check_label_map(seg, spec, required=("femur",))
            voxel_ml = seg.GetSpacing()[0] * seg.GetSpacing()[1] * seg.GetSpacing()[2] / 1000.0
            print(f"{path}: {imaging.describe(seg)}")
            for key, count in counts.items():
                print(f"    {key:>9s}: {count} voxels ({count * voxel_ml:.2f} mL)")
        else:
            print(f"{path}: {imaging.describe(imaging.read_image(path))}")
    return 0

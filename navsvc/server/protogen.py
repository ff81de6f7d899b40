"""Generate the Python stubs of ``proto/navsvc/v1/*.proto`` into ``navsvc/server/pb``.

Run ``python -m navsvc.server.protogen`` after editing a .proto file and commit the result;
``tests/test_proto.py`` regenerates into a temporary folder and fails if the committed copy
differs. protoc writes absolute imports (``from navsvc.v1 import x_pb2``), which would clash
with this package, so they are rewritten to ``navsvc.server.pb``.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from navsvc.errors import NavError

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
PB_DIR = Path(__file__).resolve().parent / "pb"
_IMPORT = re.compile(r"^from navsvc\.v1 import (\w+_pb2)", re.MULTILINE)


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The .proto files of package navsvc.v1, relative to ``proto_root``, sorted."""
    return sorted(p.relative_to(proto_root) for p in (proto_root / "navsvc" / "v1").glob("*.proto"))


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc on every navsvc.v1 proto and write flat, importable stubs into ``out_dir``.

    Returns the written files. Raises :class:`NavError` if protoc fails.
    """
    from grpc_tools import protoc  # dev dependency; imported only when generating

    files = proto_files(proto_root)
    if not files:
        raise NavError(f"expected .proto files under {proto_root / 'navsvc/v1'}, found none")
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(f) for f in files],
        ]
        if protoc.main(args) != 0:
            raise NavError(f"protoc failed on {[str(f) for f in files]}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "navsvc" / "v1").iterdir()):
            text = _IMPORT.sub(r"from navsvc.server.pb import \1", src.read_text())
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    return written


def main() -> int:
    written = generate(PB_DIR)
    init = PB_DIR / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated protobuf/gRPC stubs of navsvc.v1 (do not edit)."""\n')
    for path in written:
        sys.stdout.write(f"wrote {path.relative_to(REPO_ROOT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

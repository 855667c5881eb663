#!/usr/bin/env python3
"""Seal a model folder for publishing: what model_weights_sealed unseals on the nodes.

    tools/seal_model.py SRC OUT --age-recipient age1...        # OUT/<name>.tar.age (one archive)
    tools/seal_model.py SRC OUT --gpg-passphrase-file FILE      # OUT/<name>.tar.gpg (symmetric)
    tools/seal_model.py SRC OUT --age-recipient age1... --per-file   # OUT/<file>.age for each file

A SHA256SUMS of the plaintext (sha256sum format) goes inside the archive, or beside the encrypted files with
--per-file, so the nodes verify what they decrypted before anything is promoted. Publish OUT as the repository's
files (a hub repository, or model_mirror_snapshots on the site's mirror). Needs the age or gpg command; the
archive is streamed into the tool, so the plaintext is never written twice.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path


def model_files(src: Path) -> list:
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*")
                   if p.is_file() and not p.relative_to(src).as_posix().startswith(".autoglm/"))
    if not files:
        sys.exit("%s holds no files to seal" % src)
    return files


def sha256sums(src: Path, files: list) -> bytes:
    lines = []
    for rel in files:
        digest = hashlib.sha256()
        with open(src / rel, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        lines.append("%s  %s\n" % (digest.hexdigest(), rel))
    return "".join(lines).encode()


def encrypt_argv(args, out: Path) -> list:
    if args.age_recipient:
        return ["age", "--encrypt", "--recipient", args.age_recipient, "--output", str(out)]
    return ["gpg", "--batch", "--yes", "--quiet", "--pinentry-mode", "loopback", "--passphrase-file",
            args.gpg_passphrase_file, "--symmetric", "--cipher-algo", "AES256", "--output", str(out)]


def encrypt(args, out: Path, feed) -> None:
    """Run the tool with `feed(stdin)` writing the plaintext into it."""
    proc = subprocess.Popen(encrypt_argv(args, out), stdin=subprocess.PIPE)
    feed(proc.stdin)
    proc.stdin.close()
    if proc.wait() != 0:
        sys.exit("encrypting %s failed (rc %d)" % (out, proc.returncode))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="the model folder (config.json, weights, tokenizer)")
    parser.add_argument("out", type=Path, help="the folder to write the sealed package into")
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--age-recipient", help="the age public key (age1...) of the key the nodes get")
    key.add_argument("--gpg-passphrase-file", help="a file whose first line is the GPG passphrase")
    parser.add_argument("--per-file", action="store_true", help="encrypt each file on its own (no archive)")
    parser.add_argument("--name", help="the archive's name (default: SRC's folder name)")
    args = parser.parse_args()

    files = model_files(args.src)
    sums = sha256sums(args.src, files)
    suffix = ".age" if args.age_recipient else ".gpg"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.per_file:
        (args.out / "SHA256SUMS").write_bytes(sums)
        for rel in files:
            target = args.out / (rel + suffix)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(args.src / rel, "rb") as handle:
                encrypt(args, target, lambda stdin, h=handle: stdin.write(h.read()))
        return

    def write_archive(stdin) -> None:
        with tarfile.open(fileobj=stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("SHA256SUMS")
            info.size, info.mode = len(sums), 0o644
            tar.addfile(info, io.BytesIO(sums))
            for rel in files:
                info = tar.gettarinfo(str(args.src / rel), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                with open(args.src / rel, "rb") as handle:
                    tar.addfile(info, handle)

    encrypt(args, args.out / ((args.name or args.src.resolve().name) + ".tar" + suffix), write_archive)


if __name__ == "__main__":
    main()

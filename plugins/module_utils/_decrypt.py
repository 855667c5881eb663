# SPDX-License-Identifier: Apache-2.0
"""Decrypt one file with age or gpg as a stream: the plaintext is read from the tool while it writes it.

model_unseal unpacks an encrypted archive as it is decrypted, so a model's plaintext archive never lands on disk
and never sits in memory whole (AnsibleModule.run_command collects a command's entire output). The key goes to
the tool on its standard input, never into its argv (which every local user can read in /proc) or a file.
Standard library only: this runs on target nodes.
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile

CHUNK = 8 * 1024 * 1024
# What the tools say for a key that does not open the file (anything else: damaged or altered).
WRONG_KEY = {"age": ("no identity matched",), "gpg": ("bad session key", "bad passphrase")}


class DecryptionError(Exception):
    pass


def decrypt_argv(cipher: str, tool: str, path: str, gnupg_home: str) -> list:
    if cipher == "age":
        return [tool, "--decrypt", "--identity", "-", path]
    return [tool, "--batch", "--quiet", "--no-tty", "--homedir", gnupg_home, "--pinentry-mode", "loopback",
            "--passphrase-fd", "0", "--decrypt", path]


class Decryption:
    """The tool decrypting one package file; its plaintext is `stdout`, its verdict comes from finish()."""

    def __init__(self, argv: list, key: str, cipher: str, name: str):
        self.cipher, self.name = cipher, name
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115  # closed in finish(), after the tool exits
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors)
        try:
            # age reads identities until end of input; gpg reads the passphrase's one line.
            self.proc.stdin.write((key.strip() if cipher == "age" else key.strip("\r\n")).encode("utf-8") + b"\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.stdout = self.proc.stdout

    def finish(self, failure: Exception | None = None) -> None:
        """Wait for the tool; raise DecryptionError naming the file when it (or the reading of its output) failed."""
        # The rest of the stream (a tar's zero blocks, or what a failed unpack left): the tool authenticates
        # its last chunk only at the end, and its verdict says whether a garbled stream was a wrong key.
        while self.stdout.read(CHUNK):
            pass
        rc = self.proc.wait()
        self.stdout.close()
        self.errors.seek(0)
        said = "; ".join(line.strip() for line in self.errors.read().decode("utf-8", "replace").splitlines()
                         if line.strip() and "report unexpected" not in line)
        self.errors.close()
        if rc == 0 and failure is None:
            return
        if rc != 0:
            if any(words in said.lower() for words in WRONG_KEY[self.cipher]):
                raise DecryptionError(
                    "the key does not open %s (%s says: %s): set model_weights_sealed_key to the key the package was "
                    "sealed for (the vendor's age identity or GPG passphrase)" % (self.name, self.cipher, said))
            raise DecryptionError(
                "%s could not be decrypted (%s says: %s): the package was damaged or altered after it was sealed; "
                "ask the publisher for a good copy (its listing matched, so the hub serves the altered bytes)"
                % (self.name, self.cipher, said))
        raise DecryptionError("%s decrypted, but its plaintext is unusable: %s" % (self.name, failure))


@contextlib.contextmanager
def gnupg_home(cipher: str):
    """A throwaway GNUPGHOME for gpg (its agent stopped and the folder removed after); "" for age."""
    if cipher != "gpg":
        yield ""
        return
    home = tempfile.mkdtemp(prefix="autoglm-gnupg-")
    try:
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)

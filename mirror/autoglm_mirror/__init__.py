"""autoglm-mirror: a read-only model hub mirror speaking the Hugging Face and ModelScope download APIs.

Standard library only, so it runs on any node with python3:

    python3 -m autoglm_mirror ingest --data DIR --repo ORG/NAME [--commit SHA40] [--ref main] [--tag v1] --src DIR
    python3 -m autoglm_mirror serve --data DIR --bind 127.0.0.1 --port 8090

See store.py for the on-disk layout and the rule that decides which files are LFS files.
"""
__version__ = "0.1.0"

"""The built-in server's image options: safe defaults (nothing read from disk or the network) and their checks."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "server"))
from autoglm_serve.__main__ import parse_args


def test_image_defaults_read_nothing_from_disk_or_the_network():
    args = parse_args(["--model", "/srv/models/m"])
    assert args.allowed_local_media_path is None and args.allow_remote_media is False
    # vLLM's --limit-mm-per-prompt image=10, and upstream's 5,000,000-pixel cap.
    assert (args.limit_images_per_prompt, args.image_max_pixels) == (10, 5_000_000)


def test_image_options_are_taken(tmp_path):
    args = parse_args(["--model", "m", "--allowed-local-media-path", str(tmp_path), "--allow-remote-media",
                       "--limit-images-per-prompt", "0", "--image-max-pixels", "12544"])
    assert args.allowed_local_media_path == tmp_path and args.allow_remote_media
    assert (args.limit_images_per_prompt, args.image_max_pixels) == (0, 12544)


@pytest.mark.parametrize("argv", [
    ["--limit-images-per-prompt", "-1"], ["--image-max-pixels", "100"], ["--allowed-local-media-path", "/nonexistent"],
], ids=["negative-count", "under-the-minimum", "no-such-folder"])
def test_bad_image_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", *argv])
    assert argv[0] in capsys.readouterr().err

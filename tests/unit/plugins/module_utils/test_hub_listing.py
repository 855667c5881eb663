"""ModelScope listings (ModelScope.parse) held to what Hugging Face listings are (tests/integration/test_model_fetch_hostile.py,
BAD_LISTINGS): every Data.Files entry checked by name before anything is fetched."""
from __future__ import annotations

import hashlib

import pytest

from ansible_collections.autoglm.deploy.plugins.module_utils import _hub_listing
from ansible_collections.autoglm.deploy.plugins.module_utils._hub_listing import ListingError
from ansible_collections.autoglm.deploy.plugins.module_utils._hubs import ModelScope

parse_ms = ModelScope.parse

COMMIT = "a" * 40
OTHER = "c" * 40
WHERE = "listing org/m@master from http://mirror"


def blob(path, data=b"x", **overrides):
    entry = {"Type": "blob", "Path": path, "Size": len(data), "Sha256": hashlib.sha256(data).hexdigest(),
             "Revision": COMMIT}
    entry.update(overrides)
    return entry


def ms(*files):
    return {"Code": 200, "Data": {"Files": list(files)}}


# The same cases as BAD_LISTINGS for Hugging Face, in ModelScope's field names.
BAD_FILES = {
    "dotdot": ([blob("../escape.bin")], "Data.Files[0]"),
    "inner-dotdot": ([blob("a/../../b")], "Data.Files[0]"),
    "dot": ([blob("config.json"), blob(".")], "Data.Files[1]"),
    "absolute": ([blob("/tmp/evil")], "Data.Files[0]"),
    "backslash": ([blob("a\\..\\b")], "Data.Files[0]"),
    "newline": ([blob("a\nb")], "control characters"),
    "nul": ([blob("a\u0000b")], "control characters"),
    "escape": ([blob("a\u001b[31mb")], "control characters"),
    "empty-path": ([blob("")], "non-empty string"),
    "size-string": ([blob("w.bin", Size="12")], "size"),
    "size-negative": ([blob("w.bin", Size=-1)], "size"),
    "size-bool": ([blob("w.bin", Size=True)], "size"),
    "size-float": ([blob("w.bin", Size=1.5)], "size"),
    "sha-short": ([blob("w.bin", Sha256="abc")], "sha256"),
    "sha-type": ([blob("w.bin", Sha256=7)], "sha256"),
    "no-hash": ([blob("c.json", Sha256=None)], "cannot be verified"),
    "file-int": ([3], "Data.Files[0]"),
    "path-int": ([blob(5)], "Data.Files[0]"),
    "type-missing": ([{"Path": "w.bin", "Size": 1, "Sha256": "a" * 64}], "Type must be a string"),
    "twice": ([blob("w.bin"), blob("w.bin", b"y")], "listed twice"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_an_unsafe_or_malformed_file_entry_is_refused_by_name(case):
    files, needle = BAD_FILES[case]
    with pytest.raises(ListingError) as caught:
        parse_ms(ms(*files), WHERE, "master")
    assert needle in str(caught.value) and str(caught.value).startswith(WHERE), str(caught.value)


@pytest.mark.parametrize("data", [None, [], {"Data": None}, {"Data": {"Files": {}}}, {"Code": 404, "Message": "x"}])
def test_an_answer_without_a_files_list_is_refused(data):
    with pytest.raises(ListingError, match=r"no Data\.Files list"):
        parse_ms(data, WHERE, "master")


def test_a_well_formed_listing_names_its_commit_and_skips_folders():
    listing = ms({"Type": "tree", "Path": "sub", "Revision": COMMIT}, blob("sub/w.bin", b"w"), blob("config.json"),
                 blob(".autoglm/manifest.json"))
    commit, files = parse_ms(listing, WHERE, "master")
    assert commit == COMMIT
    assert files == {"sub/w.bin": {"size": 1, "sha256": hashlib.sha256(b"w").hexdigest(), "git_sha1": None},
                     "config.json": {"size": 1, "sha256": hashlib.sha256(b"x").hexdigest(), "git_sha1": None}}


def test_files_naming_different_commits_record_the_requested_revision():
    # On modelscope.cn a file's Revision is the last commit that touched it (it comes with CommittedDate and
    # CommitMessage), so a repo with history lists several: that is no mixed listing, and no one file's commit
    # is the snapshot's. The requested revision is recorded, as it was before any file named a commit.
    listing = ms(blob("config.json"), blob("w.bin", Revision=OTHER.upper()))
    assert parse_ms(listing, WHERE, "master")[0] == "master"
    assert parse_ms(ms(blob("w.bin", Revision=None)), WHERE, "master")[0] == "master"


def test_the_commit_named_by_the_files_wins_over_the_requested_revision():
    # model_fetch then refuses a listing for another commit than a pinned one (the answer is for commit ...).
    assert parse_ms(ms(blob("w.bin")), WHERE, OTHER)[0] == COMMIT
    assert _hub_listing.check_commit(COMMIT.upper(), WHERE) == COMMIT

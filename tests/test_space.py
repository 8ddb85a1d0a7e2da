"""Hugging Face Spaces: the README's front matter, and the Space-ready copy scripts/space.sh prepares.

Spaces refuse plain files over 10 MB (and binary files outside LFS); this repository keeps its checkpoints as
plain files, so the script makes a separate git repository in which git-lfs tracks them. These tests run the
script into a temporary folder and read what it committed there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
LIMIT = 10 * 1000 * 1000  # Hugging Face's limit for plain files
SPACE_COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\n"


def front_matter(text: str) -> tuple[dict, str]:
    """The YAML between the opening --- lines, and the text after it."""
    match = re.match(r"\A---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md does not start with front matter between --- lines"
    return yaml.safe_load(match.group(1)), text[match.end() :]


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True).stdout


def space_script(dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/space.sh", str(dest)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


# --------------------------------------------------------------------------- the README's front matter


def test_readme_starts_with_the_spaces_front_matter_for_a_docker_space():
    meta, _ = front_matter(README.read_text(encoding="utf-8"))
    assert meta["sdk"] == "docker"
    assert meta["app_port"] == 7860
    assert meta["license"] == "mit"
    assert meta["pinned"] is False
    assert isinstance(meta["title"], str) and meta["title"]
    assert isinstance(meta["emoji"], str) and meta["emoji"]
    assert {meta["colorFrom"], meta["colorTo"]} <= SPACE_COLOURS
    assert isinstance(meta["short_description"], str) and 0 < len(meta["short_description"]) <= 60


def test_the_spaces_port_is_the_port_the_image_serves():
    meta, _ = front_matter(README.read_text(encoding="utf-8"))
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(rf"^EXPOSE {meta['app_port']}\b", dockerfile, re.M)
    assert f"GRADIO_SERVER_PORT={meta['app_port']}" in dockerfile


def test_the_readme_body_after_the_front_matter_starts_with_its_title():
    _, body = front_matter(README.read_text(encoding="utf-8"))
    assert body.startswith("# attnviz\n")


# --------------------------------------------------------------------------- the prepared copy


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    lfs = subprocess.run(["git", "lfs", "version"], capture_output=True).returncode == 0
    installable = os.geteuid() == 0 and shutil.which("apt-get")
    if not lfs and not installable and os.environ.get("CI") != "true":
        pytest.skip("git-lfs is not installed and cannot be installed here (not root, or no apt-get)")
    dest = tmp_path_factory.mktemp("space") / "attnviz"
    result = space_script(dest)
    assert result.returncode == 0, result.stdout + result.stderr
    return dest


def tracked(folder: Path) -> list[str]:
    return git(folder, "ls-files", "-z").split("\0")[:-1]


def test_the_copy_holds_a_commit_of_this_repository_and_names_it(space):
    subject = git(space, "log", "-1", "--format=%s")
    source = re.fullmatch(r"attnviz ([0-9a-f]{12}) as a Hugging Face Space\n", subject)
    assert source, subject
    entries = [line.split("\t", 1) for line in git(REPO, "ls-tree", "-r", "-z", source[1]).split("\0")[:-1]]
    committed = {name for meta, name in entries if not meta.startswith("120000")}  # symbolic links are left out
    assert set(tracked(space)) == committed | {".gitattributes"}
    assert not [path for path in space.rglob("*") if path.is_symlink()]


def test_every_file_over_10_mb_and_every_binary_file_is_in_lfs_there(space):
    in_lfs = set(git(space, "lfs", "ls-files", "--name-only").splitlines())
    big = {f for f in tracked(space) if (space / f).stat().st_size > LIMIT}
    binary = {f for f in tracked(space) if b"\0" in (space / f).read_bytes()[:8000]}
    assert big, "no file over 10 MB: the built-in checkpoints are missing from the copy"
    assert big | binary <= in_lfs


def test_the_copy_commits_lfs_pointers_and_keeps_the_real_files_in_its_tree(space):
    checkpoint = "weights/builtin/cbam.safetensors"
    blob = subprocess.run(["git", "-C", str(space), "cat-file", "blob", f"HEAD:{checkpoint}"], capture_output=True,
                          check=True).stdout
    assert blob.startswith(LFS_POINTER)
    assert (space / checkpoint).read_bytes() == (REPO / checkpoint).read_bytes()


def test_the_copy_is_committed_with_its_lfs_rules(space):
    assert git(space, "status", "--porcelain") == ""
    rules = (space / ".gitattributes").read_text(encoding="utf-8").splitlines()
    assert "*.safetensors filter=lfs diff=lfs merge=lfs -text" in rules
    assert ".gitattributes" in tracked(space)


def test_this_repository_keeps_its_checkpoints_as_plain_files():
    attributes = REPO / ".gitattributes"
    assert not attributes.exists() or "filter=lfs" not in attributes.read_text(encoding="utf-8")
    size = int(git(REPO, "cat-file", "-s", "HEAD:weights/builtin/cbam.safetensors"))
    assert size > LIMIT


@pytest.mark.parametrize("where", ["inside the repository", "a folder that is not empty"])
def test_the_script_refuses_a_destination_inside_the_repository_or_not_empty(where, tmp_path):
    dest = REPO / "weights" / "space-copy" if where == "inside the repository" else tmp_path
    if where != "inside the repository":
        (tmp_path / "something").write_text("x")
    result = space_script(dest)
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert not (REPO / "weights" / "space-copy").exists()

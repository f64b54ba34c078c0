"""A release tag names a build (issue 9): the source at that tag, checked out exactly, refused when it does not exist
or moved, and the application's build command run in it with its output in the build's log."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tenant_release.errors import BuildError
from tenant_release.source import GitSource, SourceError, refuse_moved_tag, run_build

from tests.orders_example import git


def commit_version(repo: Path, version: str) -> str:
    (repo / "app.py").write_text(f"VERSION = {version!r}\n")
    git(repo, "add", "app.py")
    git(repo, "commit", "--quiet", "-m", f"version {version}")
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "application"
    path.mkdir()
    git(path, "init", "--quiet", "--initial-branch", "main")
    return path


def test_each_tag_checks_out_its_own_commit_and_code(repo: Path, tmp_path: Path) -> None:
    first = commit_version(repo, "1.4.0")
    git(repo, "tag", "-a", "v1.4.0", "-m", "release 1.4.0")  # annotated: its commit, not the tag object, counts
    second = commit_version(repo, "1.5.0")
    git(repo, "tag", "v1.5.0")
    commit_version(repo, "unreleased")
    source = GitSource(url=str(repo))

    old = source.checkout(tag="v1.4.0", version="1.4.0", into=tmp_path / "a")
    new = source.checkout(tag="v1.5.0", version="1.5.0", into=tmp_path / "b")

    assert (old.ref, old.commit) == ("refs/tags/v1.4.0", first)
    assert (new.ref, new.commit) == ("refs/tags/v1.5.0", second)
    assert (old.checkout / "app.py").read_text() == "VERSION = '1.4.0'\n"
    assert (new.checkout / "app.py").read_text() == "VERSION = '1.5.0'\n"


def test_a_ref_pattern_maps_the_version_to_a_branch(repo: Path, tmp_path: Path) -> None:
    commit_version(repo, "1.4.0")
    git(repo, "branch", "release/1.4.0")

    revision = GitSource(url=str(repo), ref="release/{version}").checkout(tag="v1.4.0", version="1.4.0", into=tmp_path / "c")

    assert revision.ref == "refs/heads/release/1.4.0"


def test_a_tag_with_no_source_is_refused_naming_the_tags_that_exist(repo: Path, tmp_path: Path) -> None:
    commit_version(repo, "1.4.0")
    git(repo, "tag", "v1.4.0")
    git(repo, "tag", "v1.3.0")

    with pytest.raises(SourceError, match=r"v9\.9\.9.* does not have \(tags there: v1\.4\.0, v1\.3\.0\)\. Fix: push"):
        GitSource(url=str(repo)).checkout(tag="v9.9.9", version="9.9.9", into=tmp_path / "d")
    assert not (tmp_path / "d").exists()  # refused before anything is fetched


def test_a_repository_that_cannot_be_read_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"reading the refs of .*nowhere failed"):
        GitSource(url=str(tmp_path / "nowhere")).resolve(tag="v1.4.0", version="1.4.0")


def test_a_moved_tag_is_refused_unless_the_trigger_asks_to_rebuild(repo: Path) -> None:
    first = commit_version(repo, "1.4.0")
    git(repo, "tag", "v1.4.0")
    second = commit_version(repo, "1.4.0-fixed")
    git(repo, "tag", "--force", "v1.4.0")  # someone moved the tag
    _, now = GitSource(url=str(repo)).resolve(tag="v1.4.0", version="1.4.0")

    assert now == second
    refuse_moved_tag(tag="v1.4.0", commit=now, built_from=None, rebuild=False)  # never built: fine
    refuse_moved_tag(tag="v1.4.0", commit=now, built_from=now, rebuild=False)  # same commit: fine
    moved = rf"now points at commit {second[:12]}, but v1\.4\.0 was already built from {first[:12]}"
    with pytest.raises(SourceError, match=moved):
        refuse_moved_tag(tag="v1.4.0", commit=now, built_from=first, rebuild=False)
    refuse_moved_tag(tag="v1.4.0", commit=now, built_from=first, rebuild=True)


def test_the_build_command_runs_in_the_checkout_and_its_output_reaches_the_log(tmp_path: Path) -> None:
    lines: list[str] = []

    run_build(
        'echo "building $RELEASE_VERSION" && mkdir -p dist && echo ok > dist/out.txt',
        cwd=tmp_path,
        env={"RELEASE_VERSION": "1.4.0"},
        timeout_seconds=60,
        log_line=lines.append,
    )

    assert (tmp_path / "dist" / "out.txt").read_text() == "ok\n"
    assert "build: building 1.4.0" in lines


def test_a_failing_build_fails_with_its_exit_code_and_last_lines(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"failed with exit code 3; its last lines:\nnpm ERR! missing script: build"):
        run_build("echo 'npm ERR! missing script: build' >&2; exit 3", cwd=tmp_path, env={}, timeout_seconds=60, log_line=print)


def test_a_build_that_hangs_is_stopped_at_its_timeout(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"ran longer than 1 s and was stopped"):
        run_build("sleep 30", cwd=tmp_path, env={}, timeout_seconds=1, log_line=print)


@pytest.mark.parametrize(
    ("url", "ref", "problem"),
    [
        ("--upload-pack=touch /tmp/pwned", "{tag}", "is not a repository address"),
        ("https://example.com/app.git", "-c core.sshCommand=x", "is not a ref pattern"),
        ("https://example.com/app.git", "{tag.__class__}", "may use only {tag} and {version}"),
    ],
)
def test_a_source_that_git_would_read_as_an_option_is_refused(url: str, ref: str, problem: str) -> None:
    with pytest.raises(SourceError, match=re.escape(problem)):
        GitSource(url=url, ref=ref).ref_for(tag="v1.4.0", version="1.4.0")


def test_a_published_archive_is_unpacked_only_inside_its_folder(tmp_path: Path) -> None:
    import io
    import zipfile

    from tenant_release.source import PublishedArchive

    def archive(*names: str) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as out:
            for name in names:
                out.writestr(name, "x")
        return buffer.getvalue()

    PublishedArchive.unpack(archive("template.yaml", "src/app.py"), tmp_path / "ok")
    assert (tmp_path / "ok" / "src" / "app.py").read_text() == "x"
    with pytest.raises(SourceError, match=r"holds '\.\./escape\.txt', which would land outside its folder"):
        PublishedArchive.unpack(archive("../escape.txt"), tmp_path / "bad")
    assert not (tmp_path / "escape.txt").exists()
    with pytest.raises(SourceError, match="is not a zip file"):
        PublishedArchive.unpack(b"not a zip", tmp_path / "worse")
    with pytest.raises(SourceError, match=r"must name the version with \{version\} or \{tag\}"):
        PublishedArchive(uri="s3://ci-builds/orders/latest.zip")

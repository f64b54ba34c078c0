"""Where a release's application comes from: the source a release tag names, checked out, and its build command.

A git source maps a release tag to a ref (by default the tag itself, as both seed pipelines do), refuses a tag
with no such ref (naming the refs that exist), checks out exactly that commit, and records it. A tag that was
moved to another commit after a build of that version is refused unless the trigger asks to rebuild.

A published archive (a zip CI put in S3 under a key naming the version) is fetched and unpacked instead; its
SHA-256 plays the commit's part.

Plain Python around the `git` command line and an S3 client: no Airflow.
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import signal
import stat
import string
import subprocess
import threading
import zipfile
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from tenant_release import classify
from tenant_release.errors import BuildError

log = logging.getLogger(__name__)

GIT_TIMEOUT_SECONDS = 300
REFS_SHOWN = 20


class SourceError(BuildError):
    """The release tag names no source, or not the source an earlier build of it used."""


@dataclass(frozen=True)
class SourceRevision:
    """The exact source a release is built from."""

    url: str
    ref: str  # the full ref the tag mapped to, e.g. refs/tags/v1.4.0
    commit: str
    checkout: Path


@dataclass(frozen=True)
class GitSource:
    url: str  # anything `git fetch` accepts: https://, ssh://, git@host:repo, a local path
    ref: str = "{tag}"  # the ref a release tag maps to: {tag} (v1.4.0) or {version} (1.4.0), e.g. "release/{version}"

    def __post_init__(self) -> None:
        # Both reach git's command line: one starting with "-" would be read as an option (--upload-pack=...).
        if not self.url or self.url.startswith("-"):
            raise SourceError(f"source.git {self.url!r} is not a repository address")
        if self.ref.startswith("-") or not self.ref.strip():
            raise SourceError(f"source.ref {self.ref!r} is not a ref pattern such as {{tag}} or release/{{version}}")
        if not _plain_fields(self.ref, required=False):
            raise SourceError(f"source.ref {self.ref!r} may use only {{tag}} and {{version}}")
        scheme, _, rest = self.url.partition("://")
        if rest and ":" in rest.split("/", 1)[0].rpartition("@")[0]:
            # A password or token in the address would reach logs, the history and the approval request.
            raise SourceError(
                f"source.git for {scheme}://{rest.split('@', 1)[-1]} holds a password or token; give git its "
                "credentials another way (a credential helper, an SSH key, GIT_ASKPASS) and remove it from the address"
            )

    def ref_for(self, *, tag: str, version: str) -> str:
        return self.ref.format(tag=tag, version=version)

    def remote_refs(self) -> dict[str, str]:
        """Every tag and branch of the repository → the commit it points at (annotated tags peeled)."""
        output = _git("ls-remote", "--tags", "--heads", self.url, what=f"reading the refs of {self.url}")
        refs: dict[str, str] = {}
        for line in output.splitlines():
            commit, _, name = line.partition("\t")
            if name.endswith("^{}"):
                refs[name[:-3]] = commit  # the peeled commit of an annotated tag wins over the tag object
            else:
                refs.setdefault(name, commit)
        return refs

    def resolve(self, *, tag: str, version: str) -> tuple[str, str]:
        """(full ref, commit) that the release tag names; refused, with what exists, when there is none."""
        wanted = self.ref_for(tag=tag, version=version)
        refs = self.remote_refs()
        for candidate in (wanted, f"refs/tags/{wanted}", f"refs/heads/{wanted}"):
            if candidate in refs:
                return candidate, refs[candidate]
        tags = sorted((r.removeprefix("refs/tags/") for r in refs if r.startswith("refs/tags/")), reverse=True)
        shown = ", ".join(tags[:REFS_SHOWN]) + (f" and {len(tags) - REFS_SHOWN} more" if len(tags) > REFS_SHOWN else "")
        raise SourceError(
            f"release tag {tag} names {wanted!r}, which {self.url} does not have (tags there: {shown or 'none'}). "
            "Fix: push that tag to the application's repository, or correct the release tag or `source.ref`."
        )

    def checkout(self, *, tag: str, version: str, into: Path, expected: tuple[str, str] | None = None) -> SourceRevision:
        """Fetch exactly the commit the tag names into an empty folder (shallow) and check it out.

        `expected` is the (ref, commit) the caller resolved and checked already: the checkout must be that commit.
        """
        ref, commit = expected or self.resolve(tag=tag, version=version)
        into.mkdir(parents=True, exist_ok=True)
        if any(into.iterdir()):
            raise SourceError(f"cannot check out {ref} into {into}: the folder is not empty")
        _git("init", "--quiet", str(into), what="preparing the checkout")
        _git("-C", str(into), "fetch", "--quiet", "--depth", "1", self.url, ref, what=f"fetching {ref} from {self.url}")
        _git("-C", str(into), "checkout", "--quiet", "--detach", "FETCH_HEAD", what=f"checking out {ref}")
        checked_out = _git("-C", str(into), "rev-parse", "HEAD", what="reading the checked-out commit").strip()
        if checked_out != commit:  # the tag moved between listing and fetching
            moved = f"{commit[:12]} -> {checked_out[:12]}"
            raise SourceError(f"{ref} moved while it was fetched ({moved}); trigger the release again")
        log.info("source: %s %s at commit %s", self.url, ref, commit)
        return SourceRevision(url=self.url, ref=ref, commit=commit, checkout=into)


def _plain_fields(pattern: str, *, required: bool) -> bool:
    """True when `pattern` uses only {tag} and {version}, without conversions or format specs (and one, if required)."""
    try:
        parsed = [
            (field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(pattern) if field is not None
        ]
    except ValueError:  # unbalanced braces
        return False
    if required and not parsed:
        return False
    return all(field in {"tag", "version"} and not spec and conversion is None for field, spec, conversion in parsed)


def refuse_moved_tag(*, tag: str, commit: str, built_from: str | None, rebuild: bool, what: str = "commit") -> None:
    """A version is built from one commit: a tag moved since an earlier build of it is refused unless asked to rebuild.

    `what` names the source's identity: a git commit, or the SHA-256 of a published archive.
    """
    if built_from is None or built_from == commit:
        return
    if rebuild:
        log.warning("release tag %s moved from %s %s to %s; rebuilding as the trigger asked", tag, what, built_from, commit)
        return
    raise SourceError(
        f"release tag {tag} now points at {what} {commit[:12]}, but {tag} was already built from {built_from[:12]}. "
        "A version must not change under the same name. Fix: tag a new version, or trigger with rebuild=true "
        "if the tag was moved on purpose."
    )


MAX_ARCHIVE_BYTES = 1 << 30  # what a published archive may unpack to


@dataclass(frozen=True)
class PublishedArchive:
    """A zip of the application's source tree (built by CI), published in S3 under a key naming the version."""

    uri: str  # s3://bucket/key with {tag} or {version}, e.g. s3://ci-builds/orders/{version}.zip

    def __post_init__(self) -> None:
        if not self.uri.startswith("s3://") or "/" not in self.uri[5:]:
            raise SourceError(f"source.archive {self.uri!r} is not an S3 URI such as s3://ci-builds/orders/{{version}}.zip")
        if not _plain_fields(self.uri, required=True):
            raise SourceError(f"source.archive {self.uri!r} must name the version with {{version}} or {{tag}} (and nothing else)")

    def location(self, *, tag: str, version: str) -> tuple[str, str]:
        bucket, _, key = self.uri[5:].format(tag=tag, version=version).partition("/")
        return bucket, key

    def fetch(self, s3: Any, *, tag: str, version: str) -> bytes:
        """The archive's bytes; a version with none is refused with the archives that exist beside it."""
        bucket, key = self.location(tag=tag, version=version)
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if classify.is_access_denied(exc):
                raise SourceError(
                    f"reading s3://{bucket}/{key} was denied ({classify.describe(exc)}). Fix: grant the orchestrator "
                    f"role s3:GetObject and s3:ListBucket on s3://{bucket} (and kms:Decrypt on its key, if encrypted)"
                ) from None
            if classify.error_code(exc) not in {"NoSuchKey", "404", "NotFound"}:
                raise
        prefix = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=REFS_SHOWN).get("Contents", [])
        shown = ", ".join(item["Key"].removeprefix(prefix) for item in listed) or "none"
        raise SourceError(
            f"release tag {tag} names s3://{bucket}/{key}, which does not exist (published there: {shown}). "
            "Fix: let CI publish that version first, or correct the release tag or `source.archive`."
        )

    @staticmethod
    def unpack(body: bytes, into: Path) -> None:
        """Unzip safely: no path outside `into`, no links, at most MAX_ARCHIVE_BYTES unpacked."""
        try:
            archive = zipfile.ZipFile(io.BytesIO(body))
        except zipfile.BadZipFile:
            raise SourceError("the published archive is not a zip file") from None
        with archive:
            members = archive.infolist()
            if sum(m.file_size for m in members) > MAX_ARCHIVE_BYTES:
                raise SourceError(f"the published archive unpacks to more than {MAX_ARCHIVE_BYTES >> 20} MiB")
            root = into.resolve()
            for member in members:
                target = (root / member.filename).resolve()
                if not target.is_relative_to(root) or stat.S_ISLNK(member.external_attr >> 16):
                    raise SourceError(f"the published archive holds {member.filename!r}, which would land outside its folder")
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
                except OSError as exc:  # e.g. both a file `a` and a file `a/b`
                    raise SourceError(
                        f"the published archive cannot be unpacked at {member.filename!r}: {exc.strerror}"
                    ) from None
                if (member.external_attr >> 16) & stat.S_IXUSR:
                    target.chmod(0o755)


# What a build sees of the worker's environment: enough to find its tools, nothing that grants anything. The
# worker holds the orchestrator's credentials, which reach every tenant; the build runs code from the repository
# at the tag (npm scripts, Makefiles), so it never gets them. `application.build_env` names more to pass.
BUILD_ENV_BASE = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "http_proxy", "https_proxy", "no_proxy")
NEVER_PASSED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE")


def build_environment(passed: tuple[str, ...], release: Mapping[str, str]) -> dict[str, str]:
    names = [*BUILD_ENV_BASE, *(n for n in passed if n not in NEVER_PASSED and not n.startswith("AIRFLOW"))]
    return {**{name: os.environ[name] for name in names if name in os.environ}, **release}


def run_build(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_seconds: float,
    log_line: Callable[[str], None] = log.info,
) -> None:
    """Run the application's build command in its checkout; every output line goes to the build's log.

    `command` comes from the fleet file (trusted configuration, like a CI pipeline's), run by the shell, with
    exactly the environment `env` (see `build_environment`), not the worker's.
    """
    log_line(f"build: $ {command}  (in {cwd})")
    tail: deque[str] = deque(maxlen=20)
    with subprocess.Popen(  # noqa: S602 (the operator's own build command, from configuration)
        command,
        shell=True,
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # a timeout stops the command and everything it started
    ) as process:

        def relay() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                tail.append(line.rstrip("\n"))
                log_line(f"build: {tail[-1]}")

        reader = threading.Thread(target=relay, name="build-output", daemon=True)
        reader.start()
        try:
            code = process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise BuildError(
                f"the build command {shlex.quote(command)} ran longer than {timeout_seconds:.0f} s and was stopped"
            ) from None
        finally:
            reader.join(timeout=10)
    if code != 0:
        last = "\n".join(tail)
        raise BuildError(f"the build command {shlex.quote(command)} failed with exit code {code}; its last lines:\n{last}")


def _git(*args: str, what: str) -> str:
    try:
        result = subprocess.run(  # noqa: S603 (fixed program; arguments are never run by a shell)
            ["git", *args],  # noqa: S607 (git from PATH, as a CI runner has it)
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},  # never wait for a password nobody will type
        )
    except FileNotFoundError:
        raise SourceError("git is not installed where the build runs; install git to build from a repository") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"{what}: git did not answer within {GIT_TIMEOUT_SECONDS} s") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise SourceError(f"{what} failed: {detail[-1] if detail else f'git exit code {result.returncode}'}")
    return result.stdout

"""Buckets on the local file system.

Layout: ``<root>/<BucketName-APPID>/<object key>``.  Every key and bucket name is
validated before it becomes a path, and the resolved path is checked to stay inside
its bucket, so no request can read or write outside the storage root.  Objects are
written atomically: a temporary file in the same directory, fsync, then
``os.replace``; a failed or interrupted write never leaves a partial object.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..filehash import file_digest
from ..errors import CIError

BUCKET_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?-[0-9]{1,20}$")
MAX_KEY_BYTES = 850  # COS limit for object keys
TMP_PREFIX = ".separator-tmp-"
# A folder marker key ``dir/`` (an empty object, as the COS console makes them) is kept as this
# hidden file inside ``dir``, so that objects can still be written under the folder.  The name
# is reserved: no key may use it.
FOLDER_MARKER = ".separator-folder"
# A hash of this host's name in every temporary's name: the workers of a Ray cluster share one
# storage root, and the same pid can be running on two nodes at once.
_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def temp_owner(pid: int | None = None) -> str:
    """Who wrote a temporary file, as its name says after :data:`TMP_PREFIX`:
    ``<pid>.<host hash>`` of the process ``pid`` on this host (default: this process).
    :func:`atomic_file` names its temporaries ``<TMP_PREFIX><owner>-<random><suffix>``, so
    that the temporaries of one dead writer can be removed without touching anyone else's."""
    return f"{os.getpid() if pid is None else pid}.{_HOST}"


def remove_temporaries(root: str | os.PathLike[str], owner: str | None = None) -> int:
    """Remove the temporary files under ``root`` that :func:`atomic_file` left behind: those of
    ``owner`` (see :func:`temp_owner`), or all of them.  Only when their writer is gone (a killed
    server or worker): a live writer's temporary is its unfinished output.  Returns how many."""
    prefix = TMP_PREFIX + (f"{owner}-" if owner else "")
    removed = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed


def validate_bucket(bucket: str) -> str:
    if not isinstance(bucket, str) or not BUCKET_RE.match(bucket):
        raise CIError("InvalidBucketName" if bucket else "InvalidArgument",
                      f"bucket name {bucket!r} is not of the form <name>-<APPID> "
                      "(lower-case letters, digits and '-', then digits)", resource=str(bucket))
    return bucket


def validate_key(key: str) -> str:
    """An object key that is safe to map to a path inside a bucket."""
    if not isinstance(key, str) or not key:
        raise CIError("InvalidArgument", "object key is empty", resource=str(key))
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise CIError("KeyTooLong", f"object key is longer than {MAX_KEY_BYTES} bytes", resource=key[:64])
    if key.startswith("/") or "\\" in key:
        raise CIError("InvalidArgument", f"object key {key!r} must be relative and use '/'", resource=key)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise CIError("InvalidArgument", "object key contains control characters", resource=key)
    parts = key.split("/")   # "dir/" (a folder marker) ends with an empty part
    if any(p in ("..", ".") for p in parts) or any(p == "" for p in parts[:-1]):
        raise CIError("InvalidArgument", f"object key {key!r} has an empty, '.' or '..' segment", resource=key)
    if FOLDER_MARKER in parts or parts[-1].startswith(TMP_PREFIX):
        raise CIError("InvalidArgument", f"object key {key!r} uses a name the local storage reserves",
                      resource=key)
    return key


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float
    path: Path


class LocalStorage:
    """The storage root: buckets are directories, objects are files."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    # -- paths ---------------------------------------------------------------
    def bucket_path(self, bucket: str, *, create: bool = False) -> Path:
        path = self.root / validate_bucket(bucket)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def object_path(self, bucket: str, key: str, *, write: bool = False) -> Path:
        """The file of object ``key``.  ``write``: for writing it now, so a key that a file
        system cannot hold beside the objects already there is refused (InvalidArgument)."""
        base = self.bucket_path(bucket).resolve()
        validate_key(key)
        path = (base / (key + FOLDER_MARKER if key.endswith("/") else key)).resolve()
        # Symlinks inside a bucket must not lead out of it.
        if base not in path.parents:
            raise CIError("AccessDenied", f"object key {key!r} escapes its bucket", status=403, resource=key)
        if write:
            if key.endswith("/"):  # only make_folder writes one
                raise CIError("InvalidArgument", f"object key {key!r} ends with '/': it can only be an "
                              "empty folder marker", resource=key)
            _check_no_clash(base, path, key)
        return path

    # -- reads ---------------------------------------------------------------
    def exists(self, bucket: str, key: str) -> bool:
        return self.object_path(bucket, key).is_file()

    def require(self, bucket: str, key: str) -> Path:
        """The path of an existing object, or the protocol's ResourceNotFound."""
        path = self.object_path(bucket, key)
        if not path.is_file():
            raise CIError("ResourceNotFound", f"input object {key!r} does not exist in bucket {bucket}",
                          resource=key)
        return path

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        path = self.require(bucket, key)
        st = path.stat()
        return ObjectInfo(key, st.st_size, st.st_mtime, path)

    def md5(self, bucket: str, key: str) -> str:
        return file_md5(self.require(bucket, key))

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects of a bucket whose key starts with ``prefix``, in key order."""
        base = self.bucket_path(bucket)
        if not base.is_dir():
            return
        found = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(base).as_posix()
                if name == FOLDER_MARKER:
                    key = key[:-len(FOLDER_MARKER)]
                if key.startswith(prefix):
                    st = path.stat()
                    found.append(ObjectInfo(key, st.st_size, st.st_mtime, path))
        yield from sorted(found, key=lambda o: o.key)

    # -- writes --------------------------------------------------------------
    @contextlib.contextmanager
    def atomic_path(self, bucket: str, key: str) -> Iterator[Path]:
        """A temporary path next to the object; renamed onto it only if the block succeeds."""
        final = self.object_path(bucket, key, write=True)
        self.bucket_path(bucket, create=True)
        with atomic_file(final) as tmp:
            yield tmp

    def put_bytes(self, bucket: str, key: str, data: bytes) -> Path:
        with self.atomic_path(bucket, key) as tmp:
            tmp.write_bytes(data)
        return self.object_path(bucket, key)

    def make_folder(self, bucket: str, key: str) -> Path:
        """Write the folder marker ``key`` (``dir/``, see :data:`FOLDER_MARKER`)."""
        if not key.endswith("/"):
            raise ValueError(f"a folder marker key ends with '/', not {key!r}")
        path = self.object_path(bucket, key)
        _check_no_clash(self.bucket_path(bucket).resolve(), path, key)
        with atomic_file(path):
            pass
        return path

    def delete(self, bucket: str, key: str) -> None:
        """Remove an object (nothing if there is none, e.g. the key is a folder of other objects),
        then the folders it leaves empty: COS has no folders, so an emptied one must not stay
        in the way of an object of the same name."""
        base = self.bucket_path(bucket).resolve()
        path = self.object_path(bucket, key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return
        folder = path.parent
        while folder != base and base in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or in use): it stays, and so do the folders above it
                break
            folder = folder.parent


def _check_no_clash(base: Path, path: Path, key: str) -> None:
    """Refuse a key that a file system cannot hold beside the objects already in the bucket:
    COS keeps ``c`` and ``c/a.txt`` side by side, a directory tree cannot."""
    for folder in path.parents:
        if folder == base:
            break
        if folder.exists() and not folder.is_dir():
            name = folder.relative_to(base).as_posix()
            raise CIError("InvalidArgument", f"object key {key!r} needs {name!r} to be a folder, but "
                          f"{name!r} is an object; the local storage cannot hold both", resource=key)
    if path.is_dir():
        raise CIError("InvalidArgument", f"object key {key!r} is a folder that holds other objects "
                      f"({key}/…); the local storage cannot hold an object of the same name", resource=key)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``final``'s directory; on success fsync it and rename it onto
    ``final``; on any exception remove it, leaving ``final`` as it was."""
    final = Path(final)
    made: list[str] = []        # the temporary's name, as soon as it exists (a Ctrl-C may follow)
    try:
        for attempt in range(3):  # a delete may remove the folder once it is empty: make it again
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{temp_owner()}-", suffix=final.suffix,
                                           dir=final.parent)
                made.append(tmp)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; objects get the usual mode
        os.replace(tmp_path, final)
    finally:
        for name in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_md5(path: str | os.PathLike[str]) -> str:
    return file_digest(path, "md5")


def nearest_existing(path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor."""
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def writable_folder_problem(folder: str | os.PathLike[str]) -> str | None:
    """Why files could not be written into ``folder`` (created as needed), or None."""
    top = nearest_existing(folder)
    if not top.is_dir():
        return f"{top} is a file, not a folder"
    if not os.access(top, os.W_OK | os.X_OK):
        return f"no permission to write in {top}"
    return None


@contextlib.contextmanager
def created_folders(paths: Iterable[str | os.PathLike[str]]) -> Iterator[None]:
    """Create the missing parent folders of ``paths``; if the block raises (Ctrl-C included),
    remove the folders created here that are still empty, deepest first, so that a failed
    or interrupted job leaves no empty folder behind."""
    made: list[Path] = []
    try:
        for path in paths:
            missing = []
            parent = Path(os.path.abspath(path)).parent
            while not parent.exists() and parent != parent.parent:
                missing.append(parent)
                parent = parent.parent
            for folder in reversed(missing):
                made.append(folder)        # first: a Ctrl-C right after mkdir must find it listed
                folder.mkdir(exist_ok=True)
        yield
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise

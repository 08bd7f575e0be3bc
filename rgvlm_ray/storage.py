"""Local and `s3://` storage through fsspec/s3fs, plus the pyarrow view of it that Ray Data takes."""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import IO

import fsspec
import pyarrow.fs as pafs

from rgvlm_ray.config import StorageConfig
from rgvlm_ray.errors import StorageError, UsageError


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def resolved(cfg: StorageConfig) -> StorageConfig:
    """Fill unset fields from the standard AWS variables, so the driver can hand Ray tasks explicit settings
    (workers on a cluster may not share the driver's environment)."""
    env = os.environ.get
    return replace(
        cfg,
        endpoint_url=cfg.endpoint_url or env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL"),
        region=cfg.region or env("AWS_DEFAULT_REGION") or env("AWS_REGION"),
        access_key_id=cfg.access_key_id or env("AWS_ACCESS_KEY_ID"),
        secret_access_key=cfg.secret_access_key or env("AWS_SECRET_ACCESS_KEY"),
        session_token=cfg.session_token or env("AWS_SESSION_TOKEN"),
    )


RETRY_MODES = ("standard", "adaptive")


def check(cfg: StorageConfig) -> StorageConfig:
    """Refuse settings botocore would reject only at the first call (inside a Ray task)."""
    if cfg.retry_mode not in RETRY_MODES:
        raise UsageError(
            f"storage.retry_mode must be one of {', '.join(RETRY_MODES)}; got {cfg.retry_mode!r}"
        )
    if cfg.max_attempts < 1:
        raise UsageError(f"storage.max_attempts counts the first try too: at least 1; got {cfg.max_attempts}")
    for key in ("connect_timeout_s", "read_timeout_s"):
        if not getattr(cfg, key) > 0:
            raise UsageError(f"storage.{key} must be > 0 seconds; got {getattr(cfg, key)}")
    return cfg


def _s3_options(cfg: StorageConfig) -> dict:
    cfg = resolved(cfg)
    client_kwargs = {
        k: v for k, v in {"endpoint_url": cfg.endpoint_url, "region_name": cfg.region}.items() if v
    }
    opts: dict = {
        "client_kwargs": client_kwargs,
        # botocore retries SlowDown/503, 5xx, timeouts and dropped connections with jittered backoff; the
        # timeouts bound each attempt (StorageConfig says what the defaults add up to).
        "config_kwargs": {
            # total_max_attempts counts the first try; botocore's `max_attempts` would count retries only
            "retries": {"total_max_attempts": cfg.max_attempts, "mode": cfg.retry_mode},
            "connect_timeout": cfg.connect_timeout_s,
            "read_timeout": cfg.read_timeout_s,
        },
        # One client per process and settings (fsspec's instance cache, keyed by these options and the pid):
        # building an s3fs client loads botocore's service model: 200 ms, against 4 ms for a HEAD to a local S3
        # (bench/storage_client.py). Listings are not cached, so a cached client never answers from a stale
        # listing when another process or worker has written since.
        "use_listings_cache": False,
    }
    for option, value in (
        ("key", cfg.access_key_id),
        ("secret", cfg.secret_access_key),
        ("token", cfg.session_token),
    ):
        if value:
            opts[option] = value
    return opts


def get_fs(path: str, cfg: StorageConfig | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without scheme) for a local path or an `s3://` URL."""
    if path.startswith("s3://"):
        fs = fsspec.filesystem("s3", **_s3_options(cfg or StorageConfig()))
        # s3fs retries botocore's whole retry cycle again (5 times by default, on timeouts and SlowDown too),
        # which multiplied every wait by 5 (a failed call took minutes): botocore alone does the retrying.
        fs.retries = 1
        return fs, fs_path(path)
    return fsspec.filesystem("file"), fs_path(path)


def fs_path(path: str) -> str:
    """The path `get_fs` hands its filesystem: bucket/key for `s3://`, an absolute path locally."""
    if path.startswith("s3://"):
        return path[len("s3://") :].rstrip("/")
    if is_remote(path):
        raise ValueError(f"unsupported storage scheme in {path!r}: use a local path or s3://bucket/prefix")
    local = path[len("file://") :] if path.startswith("file://") else path
    return os.path.abspath(local)


def canonical(path: str) -> str:
    """One spelling per location, for every root a command is given (`--in`, `--out`, `--labels`).

    Local: the absolute path with symlinks, `.`, `..` and trailing slashes resolved, so a relative path means the
    same folder on every Ray worker, whatever their working directory. `s3://`: the scheme kept, `//` and trailing
    slashes dropped. Shard names are taken relative to such roots (labelstore/layout.relative_name), so every
    spelling gives the same label-set layout.
    """
    if path.startswith("s3://"):
        key = posixpath.normpath("/" + path[len("s3://") :]).strip("/")
        return f"s3://{key}"
    return os.path.realpath(fs_path(path))


def arrow_fs(path: str, cfg: StorageConfig | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem Ray Data and pyarrow.parquet take, and the path to pass with it."""
    fs, stripped = get_fs(path, cfg)
    if not is_remote(path):
        return pafs.LocalFileSystem(), stripped
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), stripped


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def require_folder(path: str, flag: str, cfg: StorageConfig | None = None) -> None:
    """Refuse an output folder that is a file, in one line naming the flag (a FileExistsError deep in a write
    otherwise). A folder that does not exist yet is fine: the command creates it."""
    if not path:
        return
    fs, p = get_fs(path, cfg)
    if fs.isfile(p):
        raise UsageError(f"{flag} {path} is a file, not a folder: give a folder (it is created if missing)")


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def with_scheme(original: str, stripped: str) -> str:
    """Put back the scheme `get_fs` stripped, for paths reported to users."""
    return f"s3://{stripped}" if original.startswith("s3://") else stripped


# Fault injection for rehearsals (labeling/chaos.py `disk-full`): called with the path before every write.
inject_write_fault: Callable[[str], None] | None = None


@contextmanager
def atomic_open(path: str, cfg: StorageConfig | None = None) -> Iterator[IO[bytes]]:
    """Write a file so that readers see either nothing or the whole file.

    S3 PUTs (single or multipart) only become visible when complete, so a direct write is atomic.
    On local disk we write a hidden temp file beside the target and rename it over.
    """
    if inject_write_fault is not None:
        inject_write_fault(path)
    fs, p = get_fs(path, cfg)
    if is_remote(path):
        with fs.open(p, "wb") as f:
            yield f
        return
    fs.makedirs(os.path.dirname(p), exist_ok=True)
    tmp = os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def content_identity(path: str, cfg: StorageConfig | None = None) -> str:
    """ETag on S3 (no download); sha256 of the bytes locally."""
    fs, p = get_fs(path, cfg)
    if is_remote(path):
        info = fs.info(p)
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        return f"etag:{etag}:{info.get('size')}"
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


# --- storage faults: what the user must fix (or wait out) before a rerun, as opposed to bad input --------------

FULL, DENIED = (errno.ENOSPC, errno.EDQUOT), (errno.EACCES, errno.EPERM, errno.EROFS)
# botocore / aiohttp / urllib3 names: the endpoint cannot be reached at all (after the client's own retries)
UNREACHABLE = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientOSError",
    "NewConnectionError",
}
THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable"}


def chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it wraps: Python's cause/context, and a Ray task error's `cause`."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]  # type: ignore[list-item]


# A storage fault inside a Ray Data UDF reaches the driver as text only: Ray pickles the wrapping
# UserCodeException without its `__cause__`. These patterns find it in that text (the last match wins).
FAULT_TEXT = [
    (re.compile(r"\[Errno (?:28|122)\][^\n]*"), "full"),
    (re.compile(r"\[Errno (?:13|1|30)\][^\n]*"), "denied"),
    (
        re.compile(
            r"(?:EndpointConnectionError|ConnectTimeoutError|Could not connect to the endpoint URL)[^\n]*"
        ),
        "unreachable",
    ),
    (re.compile(r"\((?:SlowDown|ServiceUnavailable|Throttling\w*|InternalError)\)[^\n]*"), "throttled"),
]


def _text_fault(e: BaseException) -> tuple[str, str]:
    """(kind, the line that says so) from a Ray wrapper's text, or ("", "")."""
    if not any(w in type(e).__name__ for w in ("RayTaskError", "UserCodeException")):
        return "", ""
    text = str(e)
    for pattern, kind in FAULT_TEXT:
        found = pattern.findall(text)
        if found:
            return kind, found[-1].strip()
    return "", ""


def _kind(e: BaseException) -> str:
    code = getattr(e, "errno", None)
    if isinstance(e, OSError) and code in FULL:
        return "full"
    if isinstance(e, PermissionError) or (isinstance(e, OSError) and code in DENIED):
        return "denied"
    if type(e).__name__ in UNREACHABLE or isinstance(e, ConnectionError):
        return "unreachable"
    error = (getattr(e, "response", None) or {}).get("Error", {})
    status = (getattr(e, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if error.get("Code") in THROTTLED or int(status or 0) >= 500:
        return "throttled"
    return ""


def fault(exc: BaseException, path: str, cfg: StorageConfig | None = None) -> StorageError | None:
    """A StorageError naming the storage, the path and what to do, if `exc` (or anything it wraps) is a storage
    fault; None for anything else (bad input, bugs). `path`: what the command was writing or reading (an OSError's
    own file name wins)."""
    for e in chain(exc):
        if isinstance(e, StorageError):
            return e
        kind, what = _kind(e), ""
        if not kind:
            kind, what = _text_fault(e)
        if not kind:
            continue
        where = str(getattr(e, "filename", None) or path)
        what = what or " ".join(str(e).split())[:300] or type(e).__name__
        if is_remote(where) or (not where and kind in ("unreachable", "throttled")):
            endpoint = resolved(cfg or StorageConfig()).endpoint_url or "AWS S3"
            storage = f"S3 ({endpoint})"
        else:
            storage = "local disk"
        advice = {
            "full": "free space there (or use another --out), then rerun the same command",
            "denied": "fix the permissions (or use another --out), then rerun the same command",
            "unreachable": "check the endpoint, network and credentials, then rerun the same command",
            "throttled": "S3 kept failing after retries; rerun later, or raise storage.max_attempts",
        }[kind]
        problem = {"full": "is full", "denied": "refused access", "unreachable": "is unreachable"}.get(
            kind, "throttled or failed"
        )
        at = f" at {where}" if where else ""
        return StorageError(f"storage error: {storage} {problem}{at} ({what}): {advice}", kind)
    return None

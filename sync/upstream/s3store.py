"""The S3 object store (boto3): the upstream's blobs in a bucket, for more than one machine.

Same keys and the same behaviour as :class:`sync.upstream.objectstore.FsObjectStore`:

- ``put`` returns once S3 has answered 200, which is S3's durability promise (the
  object is stored redundantly before PUT returns), so the ingest may ack right after.
  It is conditional (``If-None-Match: *``): a key already present is left as it is.
  Every key the ingest writes names its content (its sha256, or its chunk index inside
  a folder named by the file's sha256), so "present" means "the same bytes": an
  idempotent re-upload, which on a versioned bucket would otherwise add a version.
- ``delete`` removes every version of the key (and any delete marker): on a versioned
  bucket (Object Lock needs versioning) a plain DELETE only hides the object, and no
  copy may outlive its deadline. A version under legal hold refuses: :class:`StoreError`.
- ``set_hold`` maps the upstream's legal hold onto S3 Object Lock legal hold, version by
  version, when the bucket has Object Lock enabled; on a bucket without it the hold is
  kept in the database only (as on the filesystem) and this says so once in the log.
- ``list`` / ``walk`` list the "folders" by prefix (``/`` delimiter); ``walk`` gives each
  object's LastModified (epoch s), which :func:`sync.upstream.ops.clean_partials` ages.

Location ``s3://bucket/prefix``; endpoint, region and credentials come from the
``[objects]`` section (see docs/sync.md) or, when absent, boto3's default chain
(environment, ``~/.aws``, instance role). Secrets are read from a file, never from the
TOML itself, and never logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from recorder.errors import ConfigError, StoreError

log = logging.getLogger(__name__)

LIST_PAGE = 1000          # keys per ListObjects page (S3's maximum)
DELETE_BATCH = 1000       # versions per DeleteObjects call (S3's maximum)


@dataclass
class S3Options:
    """Connection settings for an ``s3://`` location (all optional)."""

    endpoint: str = ""                 # e.g. https://s3.eu-west-2.amazonaws.com, or MinIO
    region: str = ""
    access_key_id: str = ""
    secret_access_key_file: str = ""   # a file holding the secret (mode 0600)
    addressing: str = ""               # "path" or "virtual" ("" = boto3's choice)


def _key_ok(key: str) -> None:
    if not key or key.startswith("/") or ".." in key.split("/") or "//" in key:
        raise StoreError(f"bad object key {key!r}")


class S3ObjectStore:
    """Objects in ``bucket`` under ``prefix`` (shared by every ingest worker)."""

    def __init__(self, location: str, opts: S3Options | None = None, *, client=None):
        if not location.startswith("s3://"):
            raise ConfigError([f"objects.path {location}: an S3 location starts with s3://"])
        bucket, _, prefix = location[len("s3://"):].partition("/")
        if not bucket:
            raise ConfigError([f"objects.path {location}: no bucket named"])
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.location = location
        self.client = client or _client(opts or S3Options())
        self._errors = _client_error()
        try:
            v = self.client.get_bucket_versioning(Bucket=bucket)
        except self._errors as exc:
            raise StoreError(f"S3 bucket {bucket}: {_code(exc)} ({exc})") from exc
        self.versioned = v.get("Status") in ("Enabled", "Suspended")
        try:
            lock = self.client.get_object_lock_configuration(Bucket=bucket)
            self.object_lock = (lock.get("ObjectLockConfiguration", {})
                                .get("ObjectLockEnabled") == "Enabled")
        except self._errors:
            self.object_lock = False        # ObjectLockConfigurationNotFoundError
        self._conditional = True            # If-None-Match on PUT, until refused
        self._warned_hold = False

    # -- keys -------------------------------------------------------------------------------
    def _k(self, key: str) -> str:
        _key_ok(key)
        return self.prefix + key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix):]

    # -- the ObjectStore interface -------------------------------------------------------------
    def put(self, key: str, data: bytes, *, durable: bool = True,
            dirs: set | None = None) -> None:
        """Store ``data`` under ``key`` (a no-op if the key is present: same name, same
        bytes). ``durable`` and ``dirs`` are the filesystem's knobs: every S3 PUT is
        durable when it returns, and there are no folders to fsync."""
        k = self._k(key)
        if self._conditional:
            try:
                self.client.put_object(Bucket=self.bucket, Key=k, Body=data,
                                       IfNoneMatch="*")
                return
            except self._errors as exc:
                code = _code(exc)
                if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return          # already there (or being written with the same bytes)
                if code not in ("NotImplemented", "InvalidArgument"):
                    raise StoreError(f"S3 put {key}: {code}") from exc
                # A server without conditional writes: plain PUT from now on.
                log.info("S3 server refuses If-None-Match (%s): plain PUTs", code)
                self._conditional = False
        try:
            self.client.put_object(Bucket=self.bucket, Key=k, Body=data)
        except self._errors as exc:
            raise StoreError(f"S3 put {key}: {_code(exc)}") from exc

    def sync_dirs(self, dirs: set) -> None:
        dirs.clear()

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except self._errors as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise StoreError(f"object {key} not found") from None
            raise StoreError(f"S3 get {key}: {_code(exc)}") from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except self._errors as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise StoreError(f"S3 head {key}: {_code(exc)}") from exc

    def _versions(self, k: str) -> list[dict]:
        """Every version and delete marker of exactly the key ``k``."""
        out = []
        pages = self.client.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=k)
        for page in pages:
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if v["Key"] == k:
                    out.append({"Key": k, "VersionId": v["VersionId"]})
        return out

    def delete(self, key: str) -> None:
        """Remove the object, every version of it included; missing is fine. Raises
        :class:`StoreError` if a version is under legal hold."""
        k = self._k(key)
        try:
            if not self.versioned:
                self.client.delete_object(Bucket=self.bucket, Key=k)
                return
            versions = self._versions(k)
            for i in range(0, len(versions), DELETE_BATCH):
                r = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": versions[i:i + DELETE_BATCH], "Quiet": True})
                errs = r.get("Errors") or []
                if errs:
                    raise StoreError(f"S3 delete {key}: {errs[0].get('Code')} "
                                     f"({errs[0].get('Message', '')})")
        except self._errors as exc:
            raise StoreError(f"S3 delete {key}: {_code(exc)}") from exc

    def _listing(self, prefix: str, delimiter: bool):
        kw = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": LIST_PAGE}
        if delimiter:
            kw["Delimiter"] = "/"
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**kw):
                yield from page.get("Contents", [])
        except self._errors as exc:
            raise StoreError(f"S3 list {prefix}: {_code(exc)}") from exc

    def list(self, prefix: str) -> list[str]:
        """Keys directly under the folder ``prefix`` (sorted)."""
        folder = self._k(prefix.rstrip("/")) + "/"
        return sorted(self._rel(o["Key"]) for o in self._listing(folder, True)
                      if not o["Key"].rsplit("/", 1)[-1].startswith("."))

    def walk(self, prefix: str) -> list[tuple[str, float]]:
        """Every object under the folder ``prefix``, at any depth, with its LastModified
        (epoch s), sorted by key."""
        folder = self._k(prefix.rstrip("/")) + "/"
        return sorted((self._rel(o["Key"]), o["LastModified"].timestamp())
                      for o in self._listing(folder, False))

    def clean_temp(self, max_age_s: float, now: float | None = None) -> int:
        """Nothing to do: an S3 PUT is whole or absent, it leaves no temp file."""
        return 0

    # -- legal hold -----------------------------------------------------------------------------
    def set_hold(self, key: str, on: bool) -> bool:
        """Put (or lift) S3 Object Lock legal hold on every version of ``key``. Returns
        False, doing nothing, when the bucket has no Object Lock (the database's flag
        is then the only hold, as on the filesystem)."""
        if not self.object_lock:
            if not self._warned_hold:
                log.warning("S3 bucket %s has no Object Lock: legal holds are kept in the "
                            "database only", self.bucket)
                self._warned_hold = True
            return False
        k = self._k(key)
        status = {"Status": "ON" if on else "OFF"}
        try:
            for v in self._versions(k):
                self.client.put_object_legal_hold(Bucket=self.bucket, Key=k,
                                                  VersionId=v["VersionId"], LegalHold=status)
        except self._errors as exc:
            if _code(exc) == "MethodNotAllowed":      # a delete marker
                return True
            raise StoreError(f"S3 legal hold {key}: {_code(exc)}") from exc
        return True

    def held(self, key: str) -> bool:
        """True if the current version of ``key`` is under S3 legal hold."""
        if not self.object_lock:
            return False
        try:
            r = self.client.get_object_legal_hold(Bucket=self.bucket, Key=self._k(key))
        except self._errors as exc:
            if _code(exc) in ("NoSuchObjectLockConfiguration", "NoSuchKey", "404"):
                return False
            raise StoreError(f"S3 legal hold {key}: {_code(exc)}") from exc
        return r.get("LegalHold", {}).get("Status") == "ON"


def _code(exc) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__))


def _client_error():
    from botocore.exceptions import BotoCoreError, ClientError
    return (ClientError, BotoCoreError)


def _client(opts: S3Options):
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError(["objects.path is an s3:// location but boto3 is not installed "
                           "(pip install 'linetap[s3]')"]) from None
    kw: dict = {}
    if opts.endpoint:
        kw["endpoint_url"] = opts.endpoint
    if opts.region:
        kw["region_name"] = opts.region
    if opts.access_key_id:
        if not opts.secret_access_key_file:
            raise ConfigError(["objects.s3_access_key_id needs objects.s3_secret_access_key_file"])
        try:
            secret = Path(opts.secret_access_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError([f"objects.s3_secret_access_key_file: {exc.strerror}: "
                               f"{opts.secret_access_key_file}"]) from None
        kw["aws_access_key_id"] = opts.access_key_id
        kw["aws_secret_access_key"] = secret
    s3cfg = {"addressing_style": opts.addressing} if opts.addressing else {}
    # Retries in standard mode (throttling, 5xx); timeouts short enough that a dead
    # endpoint fails the batch (no acks, the box resends) rather than hanging it.
    kw["config"] = Config(s3=s3cfg, retries={"mode": "standard", "max_attempts": 5},
                          connect_timeout=5, read_timeout=30, max_pool_connections=16)
    return boto3.client("s3", **kw)

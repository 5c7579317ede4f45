"""Stores on S3 (``s3://bucket/path.zarr``): where they are and how they are reached.

The map arrays are read (and written) by tensorstore's ``s3`` kvstore driver, with the
same strict reads and crc32c checks as local files. Everything else is an object-level
request that tensorstore does not offer and boto3 does: one LIST with sizes and ETags
(the shards present, a fingerprint), GET of the small documents and of the ``keys``
array, PUT of an upload (:mod:`._upload`).

Both clients get the same endpoint, region and credentials, resolved once here from
``storage_options`` first, then the usual AWS environment variables (tensorstore does
not read ``AWS_ENDPOINT_URL`` itself; findings in docs/STORAGE.md):

- endpoint: ``endpoint_url``, ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, else AWS's;
- region: ``region``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's, else
  ``us-east-1``;
- credentials: ``anonymous``; ``profile`` (or ``AWS_PROFILE``); ``AWS_ACCESS_KEY_ID``
  and ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``); else the default chain
  (config files, instance or container role).

Requests are retried a bounded number of times (tensorstore's default retries an
unreachable endpoint for minutes), so a store that cannot be reached fails in seconds.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import dataclasses
import functools
import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

from dali_relabel.errors import (
    ArgumentError,
    MissingDependencyError,
    StorageAccessError,
    StoreCorruptError,
)

__all__ = ["STORAGE_OPTIONS", "S3Location", "is_s3", "parse_storage_option"]

#: What ``storage_options=`` (and ``--storage-option KEY=VALUE``) accepts for S3 stores.
STORAGE_OPTIONS = {
    "endpoint_url": "the S3 endpoint, e.g. http://127.0.0.1:9000 (MinIO, Ceph, R2)",
    "region": "the bucket's region, e.g. eu-west-1",
    "profile": "a profile of ~/.aws/config and ~/.aws/credentials",
    "anonymous": "true for a public bucket (unsigned requests)",
    "requester_pays": "true for a requester-pays bucket",
    "max_retries": "attempts per request before an error (default 6)",
}
_BOOLS = ("anonymous", "requester_pays")
_DEFAULT_RETRIES = 6
# AWS's rules for bucket names (tensorstore refuses names it cannot address).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_GET_THREADS = 16


def is_s3(path: str) -> bool:
    """True for ``s3://`` URLs."""
    return str(path).startswith("s3://")


def parse_storage_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--storage-option`` as (key, value); true/false become booleans,
    digits an int."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ArgumentError(f"--storage-option takes KEY=VALUE, got {text!r}")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    return key, int(value) if value.isdigit() else value


def _checked_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    options = dict(options or {})
    unknown = sorted(set(options) - set(STORAGE_OPTIONS))
    if unknown:
        accepted = "; ".join(f"{k} ({v})" for k, v in STORAGE_OPTIONS.items())
        hint = (
            " Access keys are not options: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or name a profile."
            if {"key", "secret", "token"} & set(unknown)
            else ""
        )
        raise ArgumentError(
            f"storage_options {', '.join(map(repr, unknown))} not understood for S3; accepted: "
            f"{accepted}.{hint}"
        )
    for name in _BOOLS:
        if name in options and not isinstance(options[name], bool):
            raise ArgumentError(
                f"storage option {name} must be true or false, got {options[name]!r}"
            )
    retries = options.get("max_retries", _DEFAULT_RETRIES)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ArgumentError(f"storage option max_retries must be an integer >= 0, got {retries!r}")
    return options


def _boto3():
    try:
        import boto3
        import botocore
    except ImportError:
        raise MissingDependencyError(
            "stores on S3 need boto3: pip install 'dali_relabel[s3]'"
        ) from None
    return boto3, botocore


@functools.lru_cache(maxsize=8)
def _client(
    endpoint: str | None,
    region: str,
    profile: str | None,
    anonymous: bool,
    retries: int,
    _credentials: tuple[str, ...],
) -> Any:
    """One boto3 client per configuration (creating one takes tens of milliseconds);
    ``_credentials`` keys the cache on the environment's keys, which boto3 reads now."""
    boto3, botocore = _boto3()
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": retries + 1, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=_GET_THREADS * 2,
        signature_version=botocore.UNSIGNED if anonymous else None,
    )
    session = boto3.session.Session(profile_name=profile)
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)


def _region(options: Mapping[str, Any], profile: str | None) -> str:
    region = (
        options.get("region")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )
    if region:
        return str(region)
    if profile:  # the profile's own region, as the AWS CLI takes it
        boto3, _ = _boto3()
        region = boto3.session.Session(profile_name=profile).region_name
    return region or "us-east-1"


@dataclasses.dataclass(frozen=True)
class S3Location:
    """A store's place on S3 and how to reach it: make one with :meth:`parse`.

    Attributes:
        bucket: the bucket.
        prefix: the store's key prefix in the bucket, without a trailing slash.
        endpoint: the endpoint URL, or None for AWS's.
        region: the region requests are signed for.
        profile: the credentials profile, or None.
        anonymous: unsigned requests.
        requester_pays: requests say the requester pays.
        retries: attempts per request after the first.
    """

    bucket: str
    prefix: str
    endpoint: str | None
    region: str
    profile: str | None
    anonymous: bool
    requester_pays: bool
    retries: int

    @classmethod
    def parse(cls, url: str, storage_options: Mapping[str, Any] | None = None) -> S3Location:
        """The location of ``s3://bucket/path`` with ``storage_options`` and the environment."""
        options = _checked_options(storage_options)
        bucket, _, prefix = str(url)[len("s3://") :].partition("/")
        if not _BUCKET.match(bucket):
            raise ArgumentError(
                f"{url!r}: {bucket!r} is not an S3 bucket name (3 to 63 lowercase letters, "
                "digits, dots and hyphens); write s3://BUCKET/PATH"
            )
        prefix = prefix.strip("/")
        if not prefix:
            raise ArgumentError(
                f"{url!r} names a bucket but no store in it; write s3://{bucket}/NAME.zarr"
            )
        endpoint = (
            options.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        profile = options.get("profile") or None
        if profile is None and not os.environ.get("AWS_ACCESS_KEY_ID"):
            profile = os.environ.get("AWS_PROFILE") or None
        return cls(
            bucket=bucket,
            prefix=prefix,
            endpoint=None if endpoint is None else str(endpoint).rstrip("/"),
            region=_region(options, profile),
            profile=profile,
            anonymous=bool(options.get("anonymous", False)),
            requester_pays=bool(options.get("requester_pays", False)),
            retries=int(options.get("max_retries", _DEFAULT_RETRIES)),
        )

    # -- names -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``s3://bucket/prefix``: the store's path in messages and ``LabelMapStore.path``."""
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, relative: str) -> str:
        """The object key of ``relative`` (e.g. ``scores/c/0/0/0/0``) in the bucket."""
        return f"{self.prefix}/{relative}"

    def url_of_key(self, key: str) -> str:
        """``s3://bucket/key`` of an object key (as tensorstore's messages give it)."""
        return f"s3://{self.bucket}/{key}"

    # -- tensorstore ---------------------------------------------------------------------
    def kvstore(self, relative: str) -> dict[str, Any]:
        """tensorstore's kvstore spec of the folder ``relative`` (e.g. ``scores``)."""
        if self.anonymous:
            credentials = {"type": "anonymous"}
        elif self.profile is not None:
            credentials = {"type": "profile", "profile": self.profile}
        elif os.environ.get("AWS_ACCESS_KEY_ID"):
            credentials = {"type": "environment"}  # no probing of ~/.aws (and no noise)
        else:
            credentials = {"type": "default"}
        spec: dict[str, Any] = {
            "driver": "s3",
            "bucket": self.bucket,
            "path": f"{self.key(relative)}/",
            "aws_region": self.region,
            "aws_credentials": credentials,
            "s3_request_retries": {
                "max_retries": self.retries,
                "initial_delay": "100ms",
                "max_delay": "5s",
            },
        }
        if self.endpoint is not None:
            spec["endpoint"] = self.endpoint
        if self.requester_pays:
            spec["requester_pays"] = True
        return spec

    # -- boto3 ---------------------------------------------------------------------------
    def client(self) -> Any:
        env = tuple(
            hashlib.sha256(os.environ.get(name, "").encode()).hexdigest()
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
        )
        return _client(self.endpoint, self.region, self.profile, self.anonymous, self.retries, env)

    def _extra(self) -> dict[str, Any]:
        return {"RequestPayer": "requester"} if self.requester_pays else {}

    def access_error(self, error: BaseException, what: str) -> StorageAccessError:
        """``error`` of a request about ``what`` as one error naming the bucket, the
        endpoint and what to check."""
        where = self.endpoint or f"AWS ({self.region})"
        code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return StorageAccessError(
                f"{what}: bucket {self.bucket!r} does not exist at {where}; check the URL, "
                "and the endpoint (AWS_ENDPOINT_URL or storage option endpoint_url)"
            )
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageAccessError(
                f"{what}: access denied by {where} ({code}); check the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile) and the bucket's policy"
            )
        return StorageAccessError(
            f"{what}: {where} could not be reached or refused the request ({error}); check "
            "the endpoint (AWS_ENDPOINT_URL or storage option endpoint_url), the region and "
            "the network"
        )

    def _request(self, what: str, call: Any, **kwargs: Any) -> Any:
        _, botocore = _boto3()
        try:
            return call(Bucket=self.bucket, **self._extra(), **kwargs)
        except botocore.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                return None
            raise self.access_error(e, what) from None
        except botocore.exceptions.BotoCoreError as e:
            raise self.access_error(e, what) from None

    def get(self, relative: str) -> bytes | None:
        """The bytes of the object ``relative``, or None when there is none."""
        key = self.key(relative)
        found = self._request(self.url_of_key(key), self.client().get_object, Key=key)
        return None if found is None else found["Body"].read()

    def exists(self, relative: str) -> bool:
        key = self.key(relative)
        return self._request(self.url_of_key(key), self.client().head_object, Key=key) is not None

    def put(self, relative: str, data: bytes) -> str:
        """Store ``data`` as the object ``relative`` in one PUT (readers see the old
        object or the new one, whole), with its MD5 for the server to check (a damaged
        transfer is refused, not stored); returns that MD5 in hex."""
        key = self.key(relative)
        md5 = hashlib.md5(data)
        self._request(
            self.url_of_key(key),
            self.client().put_object,
            Key=key,
            Body=data,
            ContentMD5=base64.b64encode(md5.digest()).decode(),
        )
        return md5.hexdigest()

    def listing(self, relative: str = "") -> dict[str, tuple[int, str]]:
        """``relative key -> (size, ETag)`` of every object under the store (or under its
        folder ``relative``): one LIST, a page per thousand objects."""
        prefix = self.key(relative).rstrip("/") + "/" if relative else f"{self.prefix}/"
        out: dict[str, tuple[int, str]] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._request(self.url, self.client().list_objects_v2, **kwargs)
            if page is None:
                return out
            for item in page.get("Contents", []):
                rel = item["Key"][len(self.prefix) + 1 :]
                out[rel] = (int(item["Size"]), str(item.get("ETag", "")).strip('"'))
            if not page.get("IsTruncated"):
                return out
            token = page.get("NextContinuationToken")

    def get_many(self, relatives: list[str]) -> dict[str, bytes]:
        """The bytes of several objects, fetched on a few threads (missing ones left out)."""
        with cf.ThreadPoolExecutor(min(_GET_THREADS, max(1, len(relatives)))) as pool:
            data = dict(zip(relatives, pool.map(self.get, relatives), strict=True))
        return {k: v for k, v in data.items() if v is not None}

    # -- documents and small arrays ------------------------------------------------------
    def read_array(self, name: str) -> Any:
        """The array ``name`` of the store (``keys``, ``sources``, ``blocks_done``) read
        whole by zarr-python from its objects fetched into memory (one GET per object:
        ``keys`` is a single chunk)."""
        import zarr
        from zarr.core.buffer import cpu

        objects = self.get_many(sorted(self.listing(name)))
        if f"{name}/zarr.json" not in objects:
            raise StoreCorruptError(
                f"label map store {self.url}: {self.url}/{name}/zarr.json is missing",
                path=f"{self.url}/{name}/zarr.json",
                kind="missing",
            )
        memory = zarr.storage.MemoryStore(
            {key: cpu.Buffer.from_bytes(value) for key, value in objects.items()}
        )
        return zarr.open_array(memory, path=name, mode="r")[...]

    def fingerprint(self) -> list[str]:
        """What a copy of the store's table depends on, in lines: the metadata documents
        and ``key, size, ETag`` of every object of the two map arrays (one LIST)."""
        listing = self.listing()
        lines = []
        for rel in ("zarr.json", "scores/zarr.json", "classes/zarr.json"):
            raw = self.get(rel) or b""
            lines.append(f"{rel}\0{hashlib.sha256(raw).hexdigest()}")
        for rel in sorted(listing):
            if rel.startswith(("scores/c/", "classes/c/")):
                size, etag = listing[rel]
                lines.append(f"{rel}\0{size}\0{etag}")
        return lines

"""Storage roots on S3 (``s3://bucket/prefix``) and S3-compatible servers.

Only the root's bucket and prefix are configuration (ref.toml or ``REF_STORAGE_ROOT``). Where the
server is and who we are come from the environment, read by the AWS SDKs themselves (Icechunk's
and botocore's credential chains: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, an instance or pod role), and never pass through ref_assets' settings, records
or logs: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (an S3-compatible server; plain http
is allowed for a loopback endpoint, elsewhere only with ``REF_S3_ALLOW_HTTP=1``), ``AWS_REGION``
or ``AWS_DEFAULT_REGION``.

Concurrent writers are safe on S3 only through conditional writes (``If-None-Match`` on create,
``If-Match`` on update): they make Icechunk's ref updates compare-and-set, so a commit that lost
a race fails and is rebased, never lost. `check_conditional_writes` proves the server honours
them before the first write of a process, and refuses it otherwise.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import icechunk as ic

SCHEME = "s3://"

# botocore's debug log prints each request's headers, whose Authorization names the access key:
# never below INFO, whatever level a run's logging asks for.
logging.getLogger("botocore").setLevel(logging.INFO)


class S3Problem(RuntimeError):
    """An S3 root or server that cannot be used; the message says what to do."""


def is_s3(root: str) -> bool:
    return root.startswith(SCHEME)


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (no trailing slash; empty for the bucket's root)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or "@" in parts.netloc:
            raise S3Problem(f"{url} is not an s3://bucket/prefix storage root")
        if parts.query or parts.fragment:
            raise S3Problem(f"{url}: an S3 storage root takes no ?query or #fragment")
        return cls(parts.netloc, parts.path.strip("/"))

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, f"{self.prefix}/{name}" if self.prefix else name)

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"


@dataclass(frozen=True)
class S3Connection:
    """Where the S3 server is, from the environment (credentials stay with the SDKs)."""

    endpoint_url: str | None
    region: str | None
    allow_http: bool

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> S3Connection:
        env = os.environ if environ is None else environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
        allow_http = False
        if endpoint and endpoint.startswith("http://"):
            allowed = env.get("REF_S3_ALLOW_HTTP", "").lower() in ("1", "true", "yes")
            if not (_loopback(endpoint) or allowed):
                raise S3Problem(
                    f"the S3 endpoint {endpoint} (AWS_ENDPOINT_URL) is plain http on a "
                    "network: requests and data would travel unencrypted. Use https, or set "
                    "REF_S3_ALLOW_HTTP=1 if that network is trusted."
                )
            allow_http = True
        return cls(endpoint, region, allow_http)

    def icechunk_storage(self, location: S3Location) -> ic.Storage:
        return ic.s3_storage(
            bucket=location.bucket,
            prefix=location.prefix,
            region=self.region,
            endpoint_url=self.endpoint_url,
            allow_http=self.allow_http,
            from_env=True,
            # S3-compatible servers (SeaweedFS, MinIO, Ceph) address buckets by path.
            force_path_style=self.endpoint_url is not None,
        )

    def filesystem(self):
        """An s3fs file system on this connection (credentials from the environment)."""
        import s3fs

        client_kwargs = {"region_name": self.region} if self.region else {}
        if self.endpoint_url:
            client_kwargs["endpoint_url"] = self.endpoint_url
        return s3fs.S3FileSystem(client_kwargs=client_kwargs, skip_instance_cache=True)

    def client(self):
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region
        )


def _loopback(endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def conditional_writes_problem(settings: ic.StorageSettings | None) -> str | None:
    """Why Icechunk's storage settings would not use conditional writes; None if they do."""
    if settings is None:
        return None
    off = [
        name
        for name in ("unsafe_use_conditional_create", "unsafe_use_conditional_update")
        if getattr(settings, name) is False
    ]
    if not off:
        return None
    return (
        f"the repository's storage settings turn {' and '.join(off)} off, so concurrent "
        "commits could overwrite each other unnoticed. Remove that setting from the "
        "repository's config (Icechunk's default is on)"
    )


@functools.cache
def check_conditional_writes(connection: S3Connection, bucket: str, prefix: str) -> None:
    """Prove, once per process and bucket, that the server refuses a create over an existing
    object (``If-None-Match: *``) and an update of a changed one (``If-Match``); raise
    S3Problem otherwise. A server that ignores them would let two commits both "win"."""
    from botocore.exceptions import ClientError

    client = connection.client()
    key = f"{prefix}/.ref_assets/conditional-write-probe-{uuid.uuid4().hex}".lstrip("/")
    where = f"s3://{bucket} at {connection.endpoint_url or 'AWS'}"
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"1", IfNoneMatch="*")
        try:
            refused = []
            for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"0123456789abcdef"'}):
                try:
                    client.put_object(Bucket=bucket, Key=key, Body=b"2", **condition)
                    refused.append(False)
                except ClientError as err:
                    code = err.response.get("Error", {}).get("Code", "")
                    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                    if code not in ("PreconditionFailed", "ConditionalRequestConflict") and (
                        status not in (409, 412)
                    ):
                        raise
                    refused.append(True)
        finally:
            client.delete_object(Bucket=bucket, Key=key)
    except ClientError as err:
        raise S3Problem(
            f"cannot write to {where} ({err}); check the bucket, AWS_ENDPOINT_URL and the "
            "credentials in the environment"
        ) from None
    if not all(refused):
        raise S3Problem(
            f"the S3 server of {where} ignores conditional writes (If-None-Match / If-Match), "
            "which Icechunk needs to keep concurrent commits from overwriting each other. Use a "
            "server that supports them (AWS S3, MinIO, SeaweedFS, Ceph RGW recent versions)."
        )

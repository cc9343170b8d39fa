"""An OCI Distribution v2 client on the standard library: manifests, blobs, bearer and basic auth.

``RegistryClient(host, credentials, insecure)`` speaks HTTPS (certificates verified) or, with
``insecure``, HTTPS without verification falling back to plain HTTP, as docker's insecure
registries do. A 401 answer is followed by its ``WWW-Authenticate`` challenge: ``Bearer`` fetches a
token from the realm (with basic credentials if any), ``Basic`` sends the credentials. Redirects
(blob storage) are followed without the Authorization header when they leave the registry's host.
Every manifest and blob is verified against its digest; a blob streams to disk while being hashed.
``resolve(ref, platform)`` turns a tag into a digest once and returns what a pull needs.
Credentials never appear in an error message.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

from .config import ImageConfig
from .errors import AuthError, DigestMismatch, ImageSourceError, NotFoundError, RegistryError, Unreachable
from .manifest import ACCEPT, MAX_CONFIG, MAX_MANIFEST, Index, Manifest, Platform, check_digest, choose, parse
from .reference import DIGEST_RE, Reference

TIMEOUT = 30.0
MAX_REDIRECTS = 5
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


@dataclass
class Resolved:
    """A reference resolved once: its digest, and the manifest, config and layers for one platform."""

    reference: Reference            # the reference pinned to ``digest``
    digest: str                     # what the reference points at (an index or a manifest)
    manifest_digest: str            # the platform's manifest
    manifest: Manifest
    config: ImageConfig
    blobs: dict[str, bytes]         # digest -> body of the index (if any), manifest and config


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {key.lower(): value for key, value in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


class RegistryClient:
    def __init__(self, registry: str, credentials: Credentials | None = None, insecure: bool = False,
                 timeout: float = TIMEOUT) -> None:
        self.registry = registry
        self.credentials = credentials
        self.insecure = insecure
        self.timeout = timeout
        self._scheme: str | None = None if insecure else "https"
        self._authorization: dict[str, str] = {}  # scope -> Authorization header value

    # -- transport -------------------------------------------------------------------------------
    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "http":
            return http.client.HTTPConnection(netloc, timeout=self.timeout)
        context = ssl.create_default_context()
        if self.insecure and netloc == self.registry:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(netloc, timeout=self.timeout, context=context)

    def _open(self, url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        """GET *url*, following redirects; the caller reads and closes the response."""
        auth = headers.get("Authorization")
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            send = dict(headers)
            if auth and parts.netloc == self.registry:
                send["Authorization"] = auth
            else:
                send.pop("Authorization", None)
            connection = self._connect(parts.scheme, parts.netloc)
            try:
                connection.request("GET", urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")),
                                   headers=send)
                response = connection.getresponse()
            except ssl.SSLCertVerificationError as error:
                connection.close()
                raise RegistryError(f"registry {self.registry}: TLS certificate not trusted ({error.verify_message}) "
                                    f"— set insecure = true in [registries.\"{self.registry}\"] for a self-signed "
                                    f"registry") from None
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                raise _Unreachable(error) from None
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                url = urllib.parse.urljoin(url, response.getheader("Location"))
                response.read()
                connection.close()
                continue
            return response
        raise RegistryError(f"registry {self.registry}: too many redirects")

    def _base(self) -> str:
        if self._scheme is None:  # insecure: HTTPS without verification if it answers, else HTTP
            try:
                response = self._open(f"https://{self.registry}/v2/", {})
                response.read()
                response.close()
                self._scheme = "https"
            except _Unreachable:
                self._scheme = "http"
        return f"{self._scheme}://{self.registry}"

    def _get(self, repository: str, path: str, accept: str | None = None) -> http.client.HTTPResponse:
        scope = f"repository:{repository}:pull"
        url = f"{self._base()}/v2/{repository}/{path}"
        headers = {"User-Agent": "cantainer", **({"Accept": accept} if accept else {})}
        for attempt in range(2):
            if scope in self._authorization:
                headers["Authorization"] = self._authorization[scope]
            try:
                response = self._open(url, headers)
            except _Unreachable as error:
                if isinstance(error.error, ssl.SSLError):
                    raise Unreachable(f"registry {self.registry} is unreachable over HTTPS ({error.reason}) — "
                                      f"for a plain-HTTP registry set insecure = true in "
                                      f"[registries.\"{self.registry}\"]") from None
                raise Unreachable(f"registry {self.registry} is unreachable: {error.reason}") from None
            if response.status != 401:
                return response
            challenge = response.getheader("WWW-Authenticate") or ""
            response.read()
            response.close()
            if attempt == 1 or not challenge:
                break
            self._authorization[scope] = self._authenticate(challenge, scope)
        if self.credentials is None:
            raise AuthError(f"registry {self.registry}: {repository} needs credentials — set username and "
                            f"password_file in [registries.\"{self.registry}\"]")
        raise AuthError(f"registry {self.registry}: authentication failed for {repository} (user "
                        f"{self.credentials.username!r}) — check username and password_file in "
                        f"[registries.\"{self.registry}\"]")

    def _basic(self) -> str:
        assert self.credentials is not None
        raw = f"{self.credentials.username}:{self.credentials.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _authenticate(self, header: str, scope: str) -> str:
        scheme, params = _challenge(header)
        if scheme == "basic":
            if self.credentials is None:
                raise AuthError(f"registry {self.registry}: {scope.split(':')[1]} needs credentials — set "
                                f"username and password_file in [registries.\"{self.registry}\"]")
            if self._scheme == "http" and not self.insecure:
                raise AuthError(f"registry {self.registry}: refusing to send a password over plain HTTP")
            return self._basic()
        if scheme != "bearer" or not params.get("realm"):
            raise AuthError(f"registry {self.registry}: unsupported authentication scheme {scheme!r}")
        query = {"scope": params.get("scope") or scope}
        if params.get("service"):
            query["service"] = params["service"]
        realm = params["realm"] + ("&" if "?" in params["realm"] else "?") + urllib.parse.urlencode(query)
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https"):
            raise AuthError(f"registry {self.registry}: token realm {params['realm']!r} is not an http(s) URL")
        headers = {"User-Agent": "cantainer"}
        if self.credentials is not None:
            if parts.scheme == "http" and not self.insecure:
                raise AuthError(f"registry {self.registry}: refusing to send a password to {parts.netloc} over "
                                f"plain HTTP")
            headers["Authorization"] = self._basic()
        connection = self._connect(parts.scheme, parts.netloc)
        try:
            connection.request("GET", urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")),
                               headers=headers)
            response = connection.getresponse()
            body = response.read(1 << 20)
        except (OSError, http.client.HTTPException) as error:
            raise RegistryError(f"registry {self.registry}: token server {parts.netloc} is unreachable: "
                                f"{getattr(error, 'strerror', None) or error}") from None
        finally:
            connection.close()
        if response.status in (401, 403) and self.credentials is None:
            raise AuthError(f"registry {self.registry}: {scope.split(':')[1]} needs credentials — set username "
                            f"and password_file in [registries.\"{self.registry}\"]")
        if response.status in (401, 403):
            raise AuthError(f"registry {self.registry}: authentication failed (token server {parts.netloc} said "
                            f"{response.status}) — check username and password_file in "
                            f"[registries.\"{self.registry}\"]")
        try:
            document = json.loads(body)
            token = document.get("token") or document.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if response.status != 200 or not isinstance(token, str) or not token:
            raise AuthError(f"registry {self.registry}: token server {parts.netloc} gave no token "
                            f"(HTTP {response.status})")
        return f"Bearer {token}"

    def _fail(self, response: http.client.HTTPResponse, what: str) -> None:
        """Raise the error for a non-200 answer to a request for *what*."""
        body = response.read(65536)
        response.close()
        codes = []
        try:
            codes = [e.get("code") for e in json.loads(body).get("errors", [])]
        except (ValueError, AttributeError, TypeError):
            pass
        if response.status == 404 or any(c in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN") for c in codes):
            if "NAME_UNKNOWN" in codes:
                raise NotFoundError(f"{what}: no such repository in registry {self.registry}")
            raise NotFoundError(f"{what}: not found in registry {self.registry} (no such repository, tag or digest)")
        if response.status == 403 or "DENIED" in codes:
            raise AuthError(f"{what}: access denied by registry {self.registry}")
        detail = f" ({', '.join(c for c in codes if c)})" if any(codes) else ""
        raise RegistryError(f"{what}: registry {self.registry} answered HTTP {response.status}{detail}")

    # -- API -------------------------------------------------------------------------------------
    def manifest(self, repository: str, reference: str, what: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest or index, verified when *reference* is a digest."""
        response = self._get(repository, f"manifests/{reference}", ACCEPT)
        if response.status != 200:
            self._fail(response, what)
        body = response.read(MAX_MANIFEST + 1)
        response.close()
        if len(body) > MAX_MANIFEST:
            raise ImageSourceError(f"{what}: manifest larger than {MAX_MANIFEST >> 20} MiB")
        media_type = (response.getheader("Content-Type") or "").split(";")[0].strip()
        if DIGEST_RE.fullmatch(reference):
            check_digest(what, body, reference)
            return body, media_type, reference
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        header = response.getheader("Docker-Content-Digest")
        if header and header.startswith("sha256:") and header != digest:
            raise DigestMismatch(f"{what}: the registry says digest {header[:19]}… but the manifest hashes to "
                                 f"{digest[:19]}…")
        return body, media_type, digest

    def blob_bytes(self, repository: str, digest: str, what: str, limit: int = MAX_CONFIG) -> bytes:
        response = self._get(repository, f"blobs/{digest}")
        if response.status != 200:
            self._fail(response, what)
        body = response.read(limit + 1)
        response.close()
        if len(body) > limit:
            raise ImageSourceError(f"{what}: larger than {limit >> 20} MiB")
        check_digest(what, body, digest)
        return body

    def fetch_blob(self, repository: str, digest: str, dest: str, size: int | None = None,
                   what: str = "layer") -> None:
        """Stream the blob *digest* to the file *dest* (created 0600), verifying size and digest.

        Nothing is left at *dest* if the download fails or does not match."""
        response = self._get(repository, f"blobs/{digest}")
        if response.status != 200:
            self._fail(response, what)
        hasher = hashlib.sha256()
        written = 0
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as error:
                        raise RegistryError(f"{what}: download from {self.registry} broke off: {error}") from None
                    if not chunk:
                        break
                    hasher.update(chunk)
                    written += len(chunk)
                    if size is not None and written > size:
                        raise DigestMismatch(f"{what}: the registry sent more than the {size} bytes announced")
                    out.write(chunk)
            response.close()
            if size is not None and written != size:
                raise DigestMismatch(f"{what}: got {written} bytes, the manifest announced {size}")
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest:
                raise DigestMismatch(f"{what}: content has digest {actual[:19]}…, expected {digest[:19]}…")
        except BaseException:
            response.close()
            try:
                os.unlink(dest)
            except FileNotFoundError:
                pass
            raise

    def resolve(self, reference: Reference, platform: Platform,
                have: Callable[[str], bytes | None] = lambda _digest: None) -> Resolved:
        """Resolve *reference* (a tag once, to a digest) to the manifest and config for *platform*.
        *have(digest)* returns a blob already kept locally (verified), which is then not fetched."""
        what = str(reference)
        local = have(reference.digest) if reference.digest else None
        if local is not None:
            body, media_type, digest = local, None, reference.digest
        else:
            body, media_type, digest = self.manifest(reference.repository, reference.reference, what)
        blobs = {digest: body}
        document = parse(body, media_type, what)
        manifest_digest = digest
        if isinstance(document, Index):
            chosen = choose(document, platform, what)
            local = have(chosen.digest)
            if local is not None:
                body, media_type, manifest_digest = local, chosen.media_type, chosen.digest
            else:
                body, media_type, manifest_digest = self.manifest(reference.repository, chosen.digest,
                                                                  f"{what} ({platform})")
            blobs[manifest_digest] = body
            document = parse(body, media_type or chosen.media_type, f"{what} ({platform})")
            if isinstance(document, Index):
                raise ImageSourceError(f"{what}: an index inside an index is not supported")
        assert isinstance(document, Manifest)
        config_bytes = have(document.config.digest) or self.blob_bytes(reference.repository, document.config.digest,
                                                                       f"{what} config")
        blobs[document.config.digest] = config_bytes
        config = ImageConfig.parse(config_bytes, f"{what} config")
        check_layers(what, document, config)
        return Resolved(reference.with_digest(digest), digest, manifest_digest, document, config, blobs)


def check_layers(what: str, manifest: Manifest, config: ImageConfig) -> None:
    if len(config.diff_ids) != len(manifest.layers):
        raise ImageSourceError(f"{what}: the config lists {len(config.diff_ids)} layer diff_ids but the manifest "
                               f"{len(manifest.layers)} layers")


class _Unreachable(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error
        self.reason = getattr(error, "strerror", None) or str(error) or type(error).__name__



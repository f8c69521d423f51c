"""HTTP to image registries (the OCI distribution protocol): the one place that talks to them.

This module owns every request to a registry and to its token realm: TLS (a private CA
through ``ca_file``), credentials (given, or from ``$DOCKER_CONFIG/config.json``), the
``WWW-Authenticate`` challenge (Basic, or a Bearer token fetched from the realm for
``repository:<repo>:pull``), redirects, and the mapping of HTTP failures to
:mod:`libcontainerd.errdefs` with a sentence naming the reference. It uses only the standard
library (``http.client``). It must not talk to containerd nor write anything to disk.

Secrets: credentials and tokens live in this object's memory for one pull only; they never
appear in a ``repr``, a log line or an error message, and the ``Authorization`` header is
sent only to the host it is for (a redirect to another host, e.g. blob storage, goes without).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import re
import ssl
import threading
import urllib.parse
from collections.abc import Iterator, Mapping

from . import errdefs
from ._imagespec import MANIFEST_ACCEPT, Reference, sha256_digest

log = logging.getLogger("libcontainerd")

CHUNK = 1 << 20
_MAX_REDIRECTS = 5
_MAX_MANIFEST = 4 << 20  # containerd's limit for a manifest or an index
_REDIRECTS = (301, 302, 303, 307, 308)
_CHALLENGE_RE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def _docker_hub_api(host: str) -> str:
    return "registry-1.docker.io" if host == "docker.io" else host


def config_credentials(host: str) -> tuple[str, str] | None:
    """``(user, secret)`` for ``host`` from ``$DOCKER_CONFIG/config.json`` (default ``~/.docker``).

    Reads the ``auths`` section as docker writes it (``auth`` = base64 of ``user:password``, or
    ``username``/``password``, or an ``identitytoken``); credential helpers are not run. A missing
    or unreadable file means no credentials.
    """
    path = os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker"), "config.json")
    try:
        with open(path, "rb") as f:
            auths = json.load(f).get("auths") or {}
    except (OSError, ValueError, AttributeError):
        return None
    keys = {host, f"https://{host}", f"http://{host}"}
    if host == "docker.io":
        keys |= {"https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"}
    for key, entry in auths.items():
        if key.rstrip("/") not in {k.rstrip("/") for k in keys} or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            return user, secret
        if entry.get("identitytoken"):
            return "<token>", str(entry["identitytoken"])
        if entry.get("username"):
            return str(entry["username"]), str(entry.get("password", ""))
    return None


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _CHALLENGE_RE.finditer(rest)}
    return scheme.lower(), params


class _Auth:
    """Credentials and the Authorization header in use; never shown."""

    def __init__(self, credentials: tuple[str, str] | None) -> None:
        self.credentials = credentials
        self.header: str | None = None

    def __repr__(self) -> str:
        return "<_Auth>"


class Registry:
    """A client of one repository of one registry, for one pull or import.

    Args:
        ref: the reference being pulled (names it in every error).
        plain_http: use http instead of https.
        auth: ``(user, password)``; ``None`` reads ``$DOCKER_CONFIG/config.json``.
        ca_file: a PEM file of CAs to trust (besides the system's).
        timeout: seconds of socket inactivity before a request fails.

    Thread-safe: layers download in parallel through one instance.
    """

    def __init__(self, ref: Reference, *, plain_http: bool = False, auth: tuple[str, str] | None = None,
                 ca_file: str | None = None, timeout: float = 60.0) -> None:
        if auth is not None and (not isinstance(auth, tuple) or len(auth) != 2
                                 or not all(isinstance(x, str) for x in auth)):
            raise errdefs.InvalidParameter("auth must be a (user, password) tuple of strings")
        if not isinstance(plain_http, bool):
            raise errdefs.InvalidParameter(f"plain_http must be True or False, not {plain_http!r}")
        self.ref = ref
        self.host = _docker_hub_api(ref.host)
        self.scheme = "http" if plain_http else "https"
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if not plain_http:
            try:
                self._ssl = ssl.create_default_context()
                if ca_file is not None:
                    self._ssl.load_verify_locations(cafile=os.fspath(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise errdefs.InvalidParameter(
                    f"ca_file {ca_file!r} cannot be read as PEM certificates: {exc}") from exc
        self._auth = _Auth(auth if auth is not None else config_credentials(ref.host))
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Registry {self.scheme}://{self.host}/{self.ref.repository}>"

    # -- the protocol ------------------------------------------------------------------------

    def manifest(self, obj: str, expected_digest: str | None = None) -> tuple[str, str, bytes]:
        """Fetch a manifest or index by tag or digest: ``(media_type, digest, bytes)``.

        Raises:
            errdefs.NotFound: no such repository, tag or manifest.
            errdefs.DataLoss: the bytes do not match ``expected_digest`` (or the registry's
                ``Docker-Content-Digest``), or the manifest is too large.
        """
        what = f"image {self.ref.name}"
        resp = self._request("GET", f"/v2/{self.ref.repository}/manifests/{obj}", {"Accept": MANIFEST_ACCEPT}, what)
        try:
            length = resp.getheader("Content-Length")
            if length is not None and int(length) > _MAX_MANIFEST:
                raise errdefs.DataLoss(f"{what}: manifest {obj} is larger than {_MAX_MANIFEST} bytes")
            data = resp.read(_MAX_MANIFEST + 1)
            media_type = (resp.getheader("Content-Type") or "").split(";")[0].strip()
            header_digest = resp.getheader("Docker-Content-Digest")
        except (OSError, http.client.HTTPException) as exc:
            raise errdefs.Unavailable(f"{what}: reading manifest {obj} from {self.host} failed: {exc}") from exc
        finally:
            resp.close()
        if len(data) > _MAX_MANIFEST:
            raise errdefs.DataLoss(f"{what}: manifest {obj} is larger than {_MAX_MANIFEST} bytes")
        digest = sha256_digest(data)
        for want in (expected_digest, header_digest if header_digest and header_digest.startswith("sha256:") else None):
            if want and want != digest:
                raise errdefs.DataLoss(f"{what}: manifest {obj} from {self.host} has digest {digest}, expected {want}")
        if not media_type or media_type in ("application/json", "text/plain", "application/octet-stream"):
            try:
                media_type = str(json.loads(data).get("mediaType") or "")
            except (ValueError, AttributeError):
                media_type = ""
        return media_type, digest, data

    def blob(self, digest: str, offset: int = 0) -> tuple[int, Iterator[bytes]]:
        """Open a blob for streaming from ``offset`` (by a Range request).

        Returns:
            ``(start, chunks)``: ``start`` is ``offset`` when the registry honoured the range,
            else 0 (the whole blob follows). ``chunks`` yields up to 1 MiB at a time and closes
            the response when exhausted or closed.

        Raises:
            errdefs.NotFound: the registry has no such blob.
        """
        what = f"image {self.ref.name}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = self._request("GET", f"/v2/{self.ref.repository}/blobs/{digest}", headers, what, ok=(200, 206))
        start = offset if resp.status == 206 else 0

        def chunks() -> Iterator[bytes]:
            try:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise errdefs.Unavailable(
                            f"{what}: reading blob {digest} from {self.host} failed: {exc}") from exc
                    if not chunk:
                        return
                    yield chunk
            finally:
                resp.close()

        return start, chunks()

    # -- requests, auth, redirects ------------------------------------------------------------

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
            return http.client.HTTPSConnection(netloc, timeout=self.timeout, context=context)
        return http.client.HTTPConnection(netloc, timeout=self.timeout)

    def _send(self, method: str, url: str, headers: Mapping[str, str], what: str) -> http.client.HTTPResponse:
        """One request, following redirects; Authorization only to the registry host itself."""
        for _ in range(_MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            hdrs = dict(headers)
            if parts.netloc != self.host or parts.scheme != self.scheme:
                hdrs.pop("Authorization", None)
            conn = self._connect(parts.scheme, parts.netloc)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            try:
                conn.request(method, path, headers={"User-Agent": "libcontainerd", **hdrs})
                resp = conn.getresponse()
            except ssl.SSLCertVerificationError as exc:
                conn.close()
                raise errdefs.Unavailable(
                    f"{what}: the TLS certificate of {parts.netloc} is not trusted ({exc.verify_message}); "
                    "give the registry's CA as ca_file=") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
                raise errdefs.Unavailable(f"{what}: cannot reach registry {parts.netloc}: {reason}") from exc
            if resp.status not in _REDIRECTS:
                return resp
            location = resp.getheader("Location")
            resp.read()
            resp.close()
            if not location:
                raise errdefs.Unavailable(f"{what}: registry {parts.netloc} redirected without a Location")
            url = urllib.parse.urljoin(url, location)
        raise errdefs.Unavailable(f"{what}: too many redirects from registry {self.host}")

    def _request(self, method: str, path: str, headers: Mapping[str, str], what: str,
                 ok: tuple[int, ...] = (200,)) -> http.client.HTTPResponse:
        url = f"{self.scheme}://{self.host}{path}"
        for attempt in range(2):
            hdrs = dict(headers)
            with self._lock:
                auth_header = self._auth.header
            if auth_header:
                hdrs["Authorization"] = auth_header
            resp = self._send(method, url, hdrs, what)
            if resp.status in ok:
                return resp
            body = resp.read(64 << 10)
            resp.close()
            if resp.status == 401 and attempt == 0:
                self._authorize(resp.getheader("WWW-Authenticate") or "", what, auth_header)
                continue
            raise _status_error(resp.status, body, what, self.host, path, bool(auth_header))
        raise AssertionError("unreachable")

    def _authorize(self, challenge: str, what: str, failed_header: str | None) -> None:
        """Answer a 401's challenge: set the Basic header or fetch a Bearer token."""
        with self._lock:
            if self._auth.header != failed_header:
                return  # another thread answered the challenge meanwhile
            scheme, params = _parse_challenge(challenge)
            creds = self._auth.credentials
            if scheme == "basic":
                if creds is None:
                    raise errdefs.Unauthorized(f"{what}: registry {self.host} requires credentials (auth= or "
                                               "$DOCKER_CONFIG/config.json)")
                if failed_header is not None:
                    raise errdefs.Unauthorized(f"{what}: registry {self.host} refused the credentials")
                self._auth.header = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            elif scheme == "bearer" and params.get("realm"):
                self._auth.header = "Bearer " + self._token(params, what)
            else:
                raise errdefs.Unauthorized(f"{what}: registry {self.host} asks for unsupported authentication "
                                           f"{scheme or 'none'}")

    def _token(self, params: Mapping[str, str], what: str) -> str:
        """A token from the challenge's realm for pulling this repository."""
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        realm = urllib.parse.urlsplit(params["realm"])
        if realm.scheme not in ("http", "https") or not realm.netloc:
            raise errdefs.Unauthorized(f"{what}: registry {self.host} names an invalid token realm")
        url = urllib.parse.urlunsplit(realm._replace(
            query="&".join(filter(None, (realm.query, urllib.parse.urlencode(query))))))
        headers = {}
        creds = self._auth.credentials
        if creds is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        conn = self._connect(realm.scheme, realm.netloc)
        try:
            conn.request("GET", url[len(f"{realm.scheme}://{realm.netloc}"):] or "/",
                         headers={"User-Agent": "libcontainerd", **headers})
            resp = conn.getresponse()
            body = resp.read(1 << 20)
        except (OSError, http.client.HTTPException) as exc:
            raise errdefs.Unavailable(f"{what}: cannot reach the token service {realm.netloc}: {exc}") from exc
        finally:
            conn.close()
        if resp.status in (401, 403):
            raise errdefs.Unauthorized(f"{what}: the token service {realm.netloc} refused the "
                                       f"{'credentials' if creds else 'anonymous request'}")
        if resp.status != 200:
            raise errdefs.Unavailable(f"{what}: the token service {realm.netloc} answered HTTP {resp.status}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise errdefs.Unauthorized(f"{what}: the token service {realm.netloc} gave no token")
        return token


def _status_error(status: int, body: bytes, what: str, host: str, path: str,
                  authorized: bool) -> errdefs.LibcontainerdError:
    """The errdefs error for a registry's HTTP failure (the distribution error codes first)."""
    codes: list[str] = []
    message = ""
    try:
        errors = json.loads(body).get("errors") or []
        codes = [str(e.get("code", "")) for e in errors if isinstance(e, dict)]
        message = "; ".join(str(e.get("message", "")) for e in errors if isinstance(e, dict) and e.get("message"))
    except (ValueError, AttributeError, UnicodeDecodeError):
        pass
    detail = f" ({message})" if message else ""
    kind = "manifest" if "/manifests/" in path else "blob" if "/blobs/" in path else "resource"
    if status == 404 or {"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"} & set(codes):
        return errdefs.NotFound(f"{what}: not found in registry {host} ({kind} unknown){detail}")
    if status == 401:
        return errdefs.Unauthorized(f"{what}: registry {host} refused "
                                    f"{'the credentials' if authorized else 'an anonymous pull'}{detail}")
    if status == 403:
        return errdefs.Forbidden(f"{what}: registry {host} denies access{detail}")
    if status == 429 or status >= 500:
        return errdefs.Unavailable(f"{what}: registry {host} answered HTTP {status}{detail}")
    return errdefs.InvalidParameter(f"{what}: registry {host} answered HTTP {status}{detail}")


"""The one way the service opens ``requests`` sessions to upstreams (JWKS, GCP STS and IAM).

Two rules, the same for every upstream, AWS included (README, "Configuration"):

- **Nothing from the environment is a credential.** ``trust_env`` is off, so requests reads no
  ``~/.netrc`` (or ``NETRC``) and never turns it into an ``Authorization`` header, and takes no
  CA bundle from ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``: TLS is verified against certifi's
  bundle, as botocore does. The boto3 client is isolated from ``AWS_*`` variables and files the
  same way (:mod:`sts.providers.aws`).
- **Proxy variables are honoured, by botocore's rule.** ``HTTPS_PROXY`` / ``HTTP_PROXY`` (either
  case) name the proxy for that scheme and ``NO_PROXY`` lists hosts to reach directly, decided
  per request URL with the standard library's ``getproxies`` and ``proxy_bypass``, which is what
  botocore's ``get_environ_proxies`` uses for the AWS client. Credentials in a proxy URL are the
  operator's deliberate choice and are sent to that proxy only.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Mapping
from urllib.parse import urlsplit

import requests
import requests.adapters

#: Pooled connections per host, per session.
DEFAULT_POOL_SIZE = 10


def proxies_for(url: str) -> dict[str, str]:
    """The proxy to use for ``url`` from the environment, or none (``NO_PROXY``, no variable).

    Same decision as botocore's ``botocore.utils.get_environ_proxies`` for the AWS endpoint.
    """
    host = urlsplit(url).netloc
    try:
        # proxy_bypass reads NO_PROXY (and, on macOS and Windows, the system settings).
        if urllib.request.proxy_bypass(host):
            return {}
    except (TypeError, socket.gaierror):
        pass
    proxies: dict[str, str] = urllib.request.getproxies()
    scheme = urlsplit(url).scheme
    proxy = proxies.get(scheme)
    return {scheme: proxy} if proxy else {}


class _UpstreamAdapter(requests.adapters.HTTPAdapter):
    """Picks the proxy per request URL: with ``trust_env`` off, requests would pick none."""

    def send(  # noqa: PLR0917 - HTTPAdapter.send's own signature
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,  # noqa: ARG002 - replaced, never merged
    ) -> requests.Response:
        chosen = proxies_for(request.url or "")
        return super().send(
            request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=chosen
        )


def upstream_session(*, pool_size: int = DEFAULT_POOL_SIZE) -> requests.Session:
    """A pooled session that takes no credential from the environment and honours its proxies.

    No retries at this layer (``max_retries=0``): callers decide, so a timeout is not silently
    multiplied.
    """
    session = requests.Session()
    session.trust_env = False
    adapter = _UpstreamAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session

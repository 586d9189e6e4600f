"""mitmproxy addon for bench/egress: the same job as bot-bottle's egress proxy.

Allow-list one host, replace the client's Authorization with the real token,
answer 403 to anything else, and stream server-sent events instead of
buffering whole responses (mitmproxy's default). The bench loads it with
`mitmdump -s mitmproxy_inject.py`; BENCH_TOKEN comes from the environment.
Tested with mitmproxy 11.0.2 on Python 3.11.
"""

import os

from mitmproxy import http

ALLOWED_HOST = "localhost"
AUTHORIZATION = "Bearer " + os.environ.get("BENCH_TOKEN", "REAL-SECRET-TOKEN")


def http_connect(flow: http.HTTPFlow) -> None:
    # Refuse the tunnel itself, before any upstream connection or TLS.
    if flow.request.host != ALLOWED_HOST:
        flow.response = http.Response.make(403, b"blocked by egress policy\n")


def request(flow: http.HTTPFlow) -> None:
    if flow.request.pretty_host != ALLOWED_HOST:
        flow.response = http.Response.make(403, b"blocked by egress policy\n")
        return
    flow.request.headers["authorization"] = AUTHORIZATION


def responseheaders(flow: http.HTTPFlow) -> None:
    content_type = flow.response.headers.get("content-type", "")
    if content_type.startswith("text/event-stream"):
        flow.response.stream = True

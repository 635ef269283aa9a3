"""Schemathesis hooks for chime's API run (scripts/schemathesis).

JSON Schema cannot say everything the API checks, so a case that fits the
schema may still be refused for a reason the schema documents only in
words. Before each call this module makes such cases fit those rules too,
leaving every value that does not fit the schema untouched (so negative
cases stay negative; schemathesis re-validates a case after this hook):

* callback URLs: every `callback.url` / `url` that fits the schema's pattern
  is pointed at a receiver on loopback that this module runs (answering 204
  to any method), so callbacks are real and never leave the machine (the
  chime under test also refuses every non-loopback address);
* `fire_at`: an RFC 3339 time is moved into the accepted window (at most
  1 hour in the past, 3,660 days ahead);
* byte limits: an id or callback body within the schema's character limit
  but over the byte limit (multi-byte characters) is cut to fit;
* `retry`: `initial_backoff_ms` above `max_backoff_ms` is swapped;
* the original API: hours + minutes + seconds beyond 3,660 days is cut.
"""

import datetime
import http.server
import random
import re
import threading

import schemathesis

MAX_ID_BYTES = 256
MAX_BODY_BYTES = 64 * 1024
URL = re.compile(r"^[Hh][Tt][Tt][Pp][Ss]?://[^\u0000-\u0020\u007f-\u009f]+$")
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
HORIZON_S = 3660 * 86400


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Answers 204 to any method a timer may use."""

    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def __getattr__(self, name):
        if name.startswith("do_"):
            return self._answer
        raise AttributeError(name)

    def log_message(self, *args):
        pass


_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
_server.daemon_threads = True
threading.Thread(target=_server.serve_forever, daemon=True).start()
RECEIVER = f"http://127.0.0.1:{_server.server_address[1]}/callback"


def _cut(text, limit):
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore") or "x"


def _fire_at():
    offset = random.choice([-1800, 0, 5, 60, 3600, 86400 * 30])
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _url(value):
    return RECEIVER if isinstance(value, str) and URL.match(value) else value


def _fix_create(body):
    if not isinstance(body, dict):
        return
    if isinstance(body.get("id"), str) and len(body["id"]) <= MAX_ID_BYTES:
        body["id"] = _cut(body["id"], MAX_ID_BYTES)
    if isinstance(body.get("fire_at"), str) and RFC3339.match(body["fire_at"]):
        body["fire_at"] = _fire_at()
    callback = body.get("callback")
    if isinstance(callback, dict):
        callback["url"] = _url(callback.get("url"))
        if isinstance(callback.get("body"), str) and len(callback["body"]) <= MAX_BODY_BYTES:
            callback["body"] = _cut(callback["body"], MAX_BODY_BYTES)
    retry = body.get("retry")
    if isinstance(retry, dict):
        low, high = retry.get("initial_backoff_ms"), retry.get("max_backoff_ms")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            retry["initial_backoff_ms"], retry["max_backoff_ms"] = high, low


def _fix_legacy(body):
    if not isinstance(body, dict):
        return
    body["url"] = _url(body.get("url"))
    parts = [body.get(k) for k in ("hours", "minutes", "seconds")]
    if all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in parts if p is not None):
        hours, minutes, seconds = (p or 0 for p in parts)
        if hours * 3600 + minutes * 60 + seconds > HORIZON_S:
            for key, value in (("hours", hours % 1000), ("minutes", minutes % 1000), ("seconds", seconds % 100000)):
                if body.get(key) is not None:
                    body[key] = value


@schemathesis.hook
def before_call(context, case, kwargs):
    params = case.path_parameters
    if isinstance(params, dict) and isinstance(params.get("id"), str) and len(params["id"]) <= MAX_ID_BYTES:
        params["id"] = _cut(params["id"], MAX_ID_BYTES)
    if case.method.upper() != "POST":
        return
    path = case.operation.path
    if path == "/v1/timers":
        _fix_create(case.body)
    elif path == "/v1/timers/batch" and isinstance(case.body, dict):
        for item in case.body.get("timers") or []:
            _fix_create(item)
    elif path == "/timers":
        _fix_legacy(case.body)

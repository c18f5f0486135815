"""Hostile requests for a reward app's /score: `tests/test_serve.py` sends 240 in `make test`, `raypipe bench
serve --fuzz-requests N` as many as asked (loopback only).

    roots = hostile_files(allowed_root, outside_file)        # FIFO, socket, symlinks out, under the allowed root
    report = fuzz(url, video_bytes, roots, n=1000, valid=lambda: post_one_good_video() == 200)

Every case returns what came back: ("status", code, body bytes), ("closed", reason) or ("timeout", reason). A
case never loops unbounded: each has its own socket timeout and sends a bounded number of bytes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from urllib.parse import urlparse

import numpy as np


def pick(rng, items):
    """One of `items` (any objects; numpy's choice wants one shape)."""
    return items[int(rng.integers(len(items)))]


def raw_request(
    url: str, head: bytes, body: bytes = b"", pace_s: float = 0.0, timeout: float = 20.0, half_close: bool = False
):
    """Send `head` + `body` over a plain socket (pacing the body in 64-byte pieces when `pace_s`; half-closing
    after it with `half_close`, for a body shorter than its Content-Length), and read the answer: ("status", code,
    body), ("closed", why) when the server closes without one, or ("timeout", why) when nothing comes within
    `timeout`."""
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
            s.sendall(head)
            for i in range(0, len(body), 64 if pace_s else max(1, len(body))):
                s.sendall(body[i : i + (64 if pace_s else len(body))])
                if pace_s:
                    time.sleep(pace_s)
            if half_close:  # the body is shorter than declared: tell the server no more is coming
                s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except TimeoutError:
        return ("timeout", f"no answer within {timeout} s")
    except (ConnectionError, OSError) as e:
        return ("closed", type(e).__name__)
    if not data:
        return ("closed", "empty answer")
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    try:
        code = int(status_line.split()[1])
    except (IndexError, ValueError):
        return ("closed", f"not HTTP: {status_line[:40]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return ("status", code, body)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def _head(path: str, host: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "fuzzb") -> bytes:
    out = b""
    for name, filename, value in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode("utf-8", "surrogateescape") + value
        out += b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def cases(video: bytes, roots: dict[str, str]) -> list:
    """The hostile request kinds: functions (url, rng) -> the case's result. `roots`: paths the test made
    ("inside": an allowed root, "fifo", "socket", "link_out", "link_dev" inside it, "outside": a file beyond)."""

    def post(url, body: bytes, ctype: str | None, extra: dict | None = None, pace_s: float = 0.0):
        u = urlparse(url)
        headers = {"Content-Length": str(len(body)), **({"Content-Type": ctype} if ctype else {}), **(extra or {})}
        return raw_request(url, _head(u.path.rstrip("/") + "/score", u.netloc, headers), body, pace_s)

    def random_bytes(url, rng):
        ctype = pick(rng, ["multipart/form-data; boundary=zz", "application/json", "text/plain", "", "video/mp4"])
        return post(url, rng.bytes(int(rng.integers(0, 5000))), ctype or None)

    def truncated_multipart(url, rng):
        body = multipart([("file", "clip.mp4", video), ("prompt", None, b"a red square")])
        return post(url, body[: int(rng.integers(1, len(body)))], "multipart/form-data; boundary=fuzzb")

    def nested_multipart(url, rng):
        inner = multipart([("file", "inner.mp4", video[:2000])], boundary="inner")
        body = multipart([("file", "outer.mp4", inner), ("prompt", None, b"p")])
        return post(url, body, "multipart/form-data; boundary=fuzzb")

    def many_parts(url, rng):
        fields = [(f"f{i}", None, b"x") for i in range(int(rng.integers(10, 200)))]
        return post(url, multipart(fields), "multipart/form-data; boundary=fuzzb")

    def bad_boundary(url, rng):
        body = multipart([("file", "clip.mp4", video), ("prompt", None, b"p")])
        boundary = pick(rng, ["", "x" * 5000, "wrong", '"', "\u00e9"])
        return post(url, body, f"multipart/form-data; boundary={boundary}")

    def length_too_long(url, rng):  # declares more than it sends, then half-closes: never a hang
        u = urlparse(url)
        body = b'{"uri": "a", "prompt": "p"}'
        head = _head(
            u.path.rstrip("/") + "/score", u.netloc, {"Content-Length": "1000", "Content-Type": "application/json"}
        )
        return raw_request(url, head, body, half_close=True)

    def length_garbage(url, rng):
        u = urlparse(url)
        value = pick(rng, ["-5", "abc", "1e9", "99999999999999999999", " 12", "0x10"])
        head = _head(
            u.path.rstrip("/") + "/score", u.netloc, {"Content-Length": value, "Content-Type": "application/json"}
        )
        return raw_request(url, head, b'{"uri": "a"}')

    def huge_declared_length(url, rng):
        u = urlparse(url)
        head = _head(
            u.path.rstrip("/") + "/score",
            u.netloc,
            {"Content-Length": str(10**12), "Content-Type": "multipart/form-data; boundary=zz"},
        )
        return raw_request(url, head, b"--zz\r\n", half_close=True)

    def huge_header(url, rng):
        return post(url, b"{}", "application/json", {"X-Fuzz": "a" * int(rng.integers(10_000, 200_000))})

    def slow_body(url, rng):
        body = json.dumps({"uri": roots["inside"] + "/v0.mp4", "prompt": "slow"}).encode()
        return post(url, body[: int(rng.integers(1, len(body)))], "application/json", pace_s=0.02)

    def json_bomb(url, rng):
        depth = int(rng.integers(1000, 200_000))
        body = (
            ("[" * depth + "]" * depth).encode()
            if rng.random() < 0.5
            else ('{"a":' * depth + "1" + "}" * depth).encode()
        )
        return post(url, body, "application/json")

    def json_wrong_types(url, rng):
        body = pick(
            rng,
            [
                {"uri": ["x"], "prompt": "p"},
                {"uri": 5, "prompt": "p"},
                {"uri": roots["inside"] + "/v0.mp4", "prompt": ["p"]},
                {"uri": roots["inside"] + "/v0.mp4", "prompt": "p", "dimensions": {"VQ": 1}},
                {"uri": roots["inside"] + "/v0.mp4", "prompt": "p", "dimensions": [1, 2]},
                [1, 2, 3],
                "just a string",
                None,
            ],
        )
        return post(url, json.dumps(body).encode(), "application/json")

    def unicode_and_nul(url, rng):
        prompt = pick(
            rng, ["a\x00b", "\ud800 lone surrogate", "\u202e right-to-left", "emoji \U0001f600" * 50, "x" * 5000]
        )
        uri = pick(
            rng, [roots["inside"] + "/v0.mp4", roots["inside"] + "/v0\x00.mp4", "\x00", roots["inside"] + "/\u00e9.mp4"]
        )
        body = json.dumps({"uri": uri, "prompt": prompt}).encode()
        return post(url, body, "application/json")

    def bad_utf8_fields(url, rng):
        body = multipart(
            [("file", "clip\x00.mp\xff4", video), ("prompt", None, b"\xff\xfe\x00bad"), ("dimensions", None, b"\xc3")]
        )
        return post(url, body, "multipart/form-data; boundary=fuzzb")

    def hostile_uris(url, rng):
        uri = pick(
            rng,
            [
                roots["inside"] + "/../" + os.path.basename(roots["outside"]),
                roots["inside"] + "/" + "../" * 20 + "etc/passwd",
                roots["link_out"],
                roots["link_dev"],
                roots["fifo"],
                roots["socket"],
                "file://" + roots["fifo"],
                "file:///dev/zero",
                "/dev/urandom",
                "file:///proc/self/environ",
                "s3://bucket/key.mp4",
                "http://127.0.0.1:1/x.mp4",
                roots["inside"],
                "file://" + roots["inside"] + "/v0.mp4?x=1",
            ],
        )
        return post(url, json.dumps({"uri": uri, "prompt": "p"}).encode(), "application/json")

    return [
        random_bytes,
        truncated_multipart,
        nested_multipart,
        many_parts,
        bad_boundary,
        length_too_long,
        length_garbage,
        huge_declared_length,
        huge_header,
        slow_body,
        json_bomb,
        json_wrong_types,
        unicode_and_nul,
        bad_utf8_fields,
        hostile_uris,
    ]


def acceptable(result) -> tuple[bool, str]:
    """A 4xx answer with a JSON {error, message} body, a closed connection, or — for the odd but valid request
    (an emoji prompt on a good video) — a 200 with scores; never a 5xx, never a request left hanging (a timeout:
    the server neither answered nor closed)."""
    if result[0] == "closed":
        return True, ""
    if result[0] == "timeout":
        return False, result[1]
    _, code, body = result
    if code == 200 and body.startswith(b'{"scores"'):
        return True, ""
    if not 400 <= code < 500:
        return False, f"status {code}: {body[:300]!r}"
    if code in (400, 413, 431) and not body.lstrip().startswith(b"{"):
        return True, ""  # the HTTP server itself refused it (bad framing, too large) before the app saw it
    try:
        parsed = json.loads(body)
    except ValueError:
        return False, f"status {code} without a JSON body: {body[:200]!r}"
    ok = isinstance(parsed, dict) and ("error" in parsed or "detail" in parsed)
    return ok, "" if ok else f"status {code} body {parsed!r}"


def hostile_files(allowed_root, outside_file) -> dict[str, str]:
    """Under `allowed_root`/hostile: a FIFO, a UNIX socket, a symlink to `outside_file` and one to /dev/zero; the
    paths `cases` needs ("inside", "outside", "fifo", "socket", "link_out", "link_dev")."""
    from pathlib import Path

    hostile = Path(allowed_root) / "hostile"
    hostile.mkdir(exist_ok=True)
    fifo, sock_path = hostile / "fifo.mp4", hostile / "sock.mp4"
    if not fifo.exists():
        os.mkfifo(fifo)
    if not sock_path.exists():
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(sock_path))
    for name, target in (("out.mp4", Path(outside_file)), ("dev.mp4", Path("/dev/zero"))):
        if not (hostile / name).is_symlink():
            (hostile / name).symlink_to(target)
    return {
        "inside": str(allowed_root),
        "outside": str(outside_file),
        "fifo": str(fifo),
        "socket": str(sock_path),
        "link_out": str(hostile / "out.mp4"),
        "link_dev": str(hostile / "dev.mp4"),
    }


def fuzz(url: str, video: bytes, roots: dict, n: int, valid, burst: int = 24, seed: int = 0) -> dict:
    """`n` hostile requests cycling through every case (seeded); after every `burst` of them `valid()` must be
    true (a good request answered 200). Returns counts: by case, by answer (status code or closed/timeout), the
    failures (what `acceptable` refused) and the bursts after which the valid request failed."""
    kinds = cases(video, roots)
    rng = np.random.default_rng(seed)
    by_case: dict[str, int] = {}
    answers: dict[str, int] = {}
    failures, bad_bursts = [], []
    t0 = time.perf_counter()
    for i in range(n):
        case = kinds[i % len(kinds)]
        result = case(url, rng)
        by_case[case.__name__] = by_case.get(case.__name__, 0) + 1
        key = str(result[1]) if result[0] == "status" else result[0]
        answers[key] = answers.get(key, 0) + 1
        ok, why = acceptable(result)
        if not ok:
            failures.append(f"{case.__name__}: {why}")
        if i % burst == burst - 1 and not valid():
            bad_bursts.append(i // burst)
    return {
        "requests": n,
        "by_case": by_case,
        "answers": dict(sorted(answers.items())),
        "failures": failures,
        "valid_failed_after_bursts": bad_bursts,
        "wall_s": round(time.perf_counter() - t0, 1),
    }

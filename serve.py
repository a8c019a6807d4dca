"""A rerank server that speaks the request shapes RAG frameworks call, on the standard library.

    python serve.py --host 127.0.0.1 --port 8080                      # the built-in reranker
    python serve.py --port 8080 --model path/to/ERank-4B --max-doc-tokens 1024
    curl -s localhost:8080/v1/rerank -H 'Content-Type: application/json' \\
        -d '{"query": "how do I list files?", "documents": ["ls lists directory contents", "Paris is in France"]}'

Endpoints (docs/serving.md has a curl example for each and the client settings):
  POST /v1/rerank, /v2/rerank  Cohere's and Jina's shape. {"model"?, "query", "documents": [str | {"text"}],
                               "top_n"?, "return_documents"?} -> {"id", "model", "results": [{"index",
                               "relevance_score", "document"?: {"text"}}], "usage": {"total_tokens"}, "meta"}
  POST /rerank                 text-embeddings-inference's shape when the body has "texts": {"query", "texts",
                               "raw_scores"?, "return_text"?, "truncate"?} -> [{"index", "score", "text"?}];
                               Cohere's shape when it has "documents"
  GET /health                  200 once the model is loaded and warmed up (503 before)
  GET /v1/models               the one model served

Scores and order are rerank.py's (the same flags give the same ranking): results best first;
relevance_score = rerank.py's score / 10, i.e. s * P(s) / 10 (default) or the calibrated expected
score / 10 (--score expected), both in 0..1; an empty document scores 0 and comes last. TEI's
"score" is the same number, or rerank.py's score itself with "raw_scores": true. Texts are cut to
--max-query-tokens / --max-doc-tokens as in rerank.py ("truncate" is accepted and changes nothing);
meta.warnings says when they were. A request's "model" may name anything: one model is served.

How requests are served: each connection has a thread (ThreadingHTTPServer) that reads and checks
the request and makes its prompts (Reranker.prepare), then queues it. One scoring thread owns the
model: it takes the first queued request, waits up to --batch-wait-ms for others that arrive
together (until they hold --batch-tokens of prompts), and scores them all in shared batches
(Reranker.rank). A pair's score does not depend on the pairs batched with it, so every response
equals what its request gets alone (tested).

Bad requests get {"error": {"message", "type", "code"}} and a 4xx status, the message naming the
field: 400 body not UTF-8 or not JSON, 422 a missing or mistyped field, 413 a body over
--max-body-bytes or more than --max-documents documents, 404 an unknown path, 405 a wrong method,
408 a body not sent within --timeout seconds, 503 when --max-pending requests already wait. A
client that goes away costs only its own request. SIGTERM or Ctrl-C stops accepting connections,
finishes the requests in flight, then exits (a second Ctrl-C exits at once).
"""
import argparse
import http
import http.server
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field

import rerank as R


class RequestError(Exception):
    """A request the server refuses: HTTP status and a message naming the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


ERROR_TYPES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 408: "timeout",
               411: "length_required", 413: "too_large", 422: "validation", 500: "internal", 503: "unavailable"}


# ----------------------------------------------------------------------------- request shapes


@dataclass
class Limits:
    max_documents: int = 1000
    max_body_bytes: int = 10 * 2**20
    max_pending: int = 64


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400 / 422 naming what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"request body: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    if not text.strip():
        raise RequestError(400, "request body: empty; expected a JSON object")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"request body: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(body, dict):
        raise RequestError(422, f"request body: expected a JSON object, got {json_type(body)}")
    return body


def json_type(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def field_of(body: dict, name: str, kind: type, default=None, required=False):
    """body[name] checked against `kind` (bool and int kept apart); a 422 naming the field if not."""
    if name not in body or (body[name] is None and not required):
        if required:
            raise RequestError(422, f"field '{name}': missing")
        return default
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = {str: "a string", list: "a list", bool: "true or false", int: "an integer"}[kind]
        raise RequestError(422, f"field '{name}': expected {want}, got {json_type(value)}")
    return value


def texts_of(body: dict, name: str, limits: Limits, objects: bool) -> list[str]:
    """The documents of a request: strings, or (objects=True) {"text": str} objects too."""
    items = field_of(body, name, list, required=True)
    if not items:
        raise RequestError(422, f"field '{name}': empty list; give at least one document")
    if len(items) > limits.max_documents:
        raise RequestError(413, f"field '{name}': {len(items)} documents, more than the server's limit of "
                                f"{limits.max_documents} (--max-documents)")
    texts = []
    for i, d in enumerate(items):
        if isinstance(d, str):
            texts.append(checked(d, f"{name}[{i}]"))
        elif objects and isinstance(d, dict) and isinstance(d.get("text"), str):
            texts.append(checked(d["text"], f"{name}[{i}].text"))
        elif objects and isinstance(d, dict):
            raise RequestError(422, f"field '{name}[{i}].text': missing or not a string")
        else:
            want = "a string or an object with 'text'" if objects else "a string"
            raise RequestError(422, f"field '{name}[{i}]': expected {want}, got {json_type(d)}")
    return texts


def checked(text: str, name: str) -> str:
    """JSON can spell strings that are not Unicode text (a lone surrogate, "\\ud800"): a 422."""
    try:
        R.check_text(text, f"field '{name}'")
    except R.InputError as e:
        raise RequestError(422, str(e)) from None
    return text


def query_of(body: dict) -> str:
    query = field_of(body, "query", str, required=True)
    if not query.strip():
        raise RequestError(422, "field 'query': empty")
    return checked(query, "query")


@dataclass
class Request:
    """One rerank request, whatever its shape."""
    shape: str  # "cohere" or "tei"
    query: str
    texts: list[str]
    top_n: int | None = None
    return_documents: bool = False
    raw_scores: bool = False
    version: str = "1"


def parse_cohere(body: dict, limits: Limits, version="1") -> Request:
    """Cohere's (v1, v2) and Jina's request: {"model"?, "query", "documents", "top_n"?, "return_documents"?}."""
    field_of(body, "model", str)
    req = Request("cohere", query_of(body), texts_of(body, "documents", limits, objects=True), version=version)
    req.top_n = field_of(body, "top_n", int)
    if req.top_n is not None and req.top_n < 1:
        raise RequestError(422, f"field 'top_n': must be at least 1, got {req.top_n}")
    req.return_documents = field_of(body, "return_documents", bool, default=False)
    return req


def parse_tei(body: dict, limits: Limits) -> Request:
    """text-embeddings-inference's request: {"query", "texts", "raw_scores"?, "return_text"?, "truncate"?}."""
    req = Request("tei", query_of(body), texts_of(body, "texts", limits, objects=False))
    req.raw_scores = field_of(body, "raw_scores", bool, default=False)
    req.return_documents = field_of(body, "return_text", bool, default=False)
    field_of(body, "truncate", bool)  # texts are always cut to --max-doc-tokens, as rerank.py does
    field_of(body, "truncation_direction", str)
    return req


def relevance(record: dict) -> float:
    """rerank.py's score / 10, in 0..1: s * P(s) / 10 or the expected score / 10; unparsed and empty 0."""
    return min(max(record["score"] / 10, 0.0), 1.0)


def response_for(req: Request, records: list[dict], prepared: R.Prepared, reranker: R.Reranker, model_name: str):
    """The JSON response of a request from its records (best first)."""
    tokens = sum(len(p) for p in prepared.prompts)
    if req.shape == "tei":
        out = []
        for r in records:
            item = {"index": r["position"], "score": r["score"] if req.raw_scores else relevance(r)}
            if req.return_documents:
                item["text"] = req.texts[r["position"]]
            out.append(item)
        return out
    results = []
    for r in records[:req.top_n]:
        item = {"index": r["position"], "relevance_score": relevance(r)}
        if req.return_documents:
            item["document"] = {"text": req.texts[r["position"]]}
        results.append(item)
    meta = {"api_version": {"version": req.version}, "billed_units": {"search_units": 1},
            "tokens": {"input_tokens": tokens, "output_tokens": 0}}
    warnings = []
    if prepared.query_cut:
        end = "first" if reranker.query_keep == "start" else "last"
        warnings.append(f"the query was cut to its {end} {reranker.max_query_tokens} tokens")
    if prepared.docs_cut:
        warnings.append(f"{prepared.docs_cut} document(s) were cut to their first {reranker.max_doc_tokens} tokens")
    if warnings:
        meta["warnings"] = warnings
    return {"id": str(uuid.uuid4()), "model": model_name, "results": results, "usage": {"total_tokens": tokens},
            "meta": meta}


# ----------------------------------------------------------------------------- the scoring thread


@dataclass
class Job:
    prepared: R.Prepared
    done: threading.Event = field(default_factory=threading.Event)
    records: list | None = None
    error: Exception | None = None

    @property
    def tokens(self) -> int:
        return sum(len(p) for p in self.prepared.prompts)


STOP = object()  # put on the queue to end the scoring thread


class Batcher:
    """The one thread that calls the model. It takes the first queued job, waits up to `wait`
    seconds for more that arrive together (while they hold fewer than `batch_tokens` prompt tokens),
    and ranks them in one Reranker.rank call, whose batches mix their pairs."""

    def __init__(self, reranker: R.Reranker, batch_tokens: int, wait: float, max_pending: int):
        self.reranker, self.batch_tokens, self.wait, self.max_pending = reranker, batch_tokens, wait, max_pending
        self.queue = queue.Queue()
        self.stats = {"requests": 0, "rank_calls": 0}  # written by the scoring thread only
        self.thread = threading.Thread(target=self.loop, name="scoring", daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.queue.put(STOP)
        self.thread.join()

    def submit(self, prepared: R.Prepared) -> list[dict]:
        """Queue one prepared request and wait for its records (called by connection threads)."""
        if self.queue.qsize() >= self.max_pending:
            raise RequestError(503, f"server busy: {self.max_pending} requests are already waiting "
                                    "(--max-pending); retry later")
        job = Job(prepared)
        self.queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.records

    def loop(self):
        carried = None  # a job taken from the queue that did not fit the last group
        while True:
            first = carried if carried is not None else self.queue.get()
            carried = None
            if first is STOP:
                return
            jobs, tokens = [first], first.tokens
            deadline = time.monotonic() + self.wait
            while tokens < self.batch_tokens:
                try:
                    job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is STOP or tokens + job.tokens > self.batch_tokens:
                    carried = job
                    break
                jobs.append(job)
                tokens += job.tokens
            try:
                results = self.reranker.rank([j.prepared for j in jobs])
            except Exception as e:  # the model failed (out of memory, ...): each request of the group answers 500
                traceback.print_exc()
                for j in jobs:
                    j.error = RequestError(500, f"scoring failed: {type(e).__name__}: {e}")
            else:
                for j, records in zip(jobs, results):
                    j.records = records
            self.stats["requests"] += len(jobs)
            self.stats["rank_calls"] += 1
            for j in jobs:
                j.done.set()


# ----------------------------------------------------------------------------- HTTP


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection, one request (HTTP/1.1 so that "Expect: 100-continue" is answered, then
    "Connection: close": a connection never waits idle, so shutting down never waits for one)."""

    protocol_version = "HTTP/1.1"
    server: "RerankServer"

    def setup(self):
        self.timeout = self.server.timeout_s  # socket timeout for reading the request
        super().setup()

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def do_HEAD(self):
        self.dispatch("HEAD")

    def do_OPTIONS(self):
        self.dispatch("OPTIONS")

    ROUTES = {"/v1/rerank": "POST", "/v2/rerank": "POST", "/rerank": "POST", "/health": "GET", "/v1/models": "GET"}

    def dispatch(self, method: str):
        t0, self.n_docs, self.body_read = time.perf_counter(), 0, False
        path = self.path.split("?", 1)[0]
        try:
            if path not in self.ROUTES:
                raise RequestError(404, f"no such path: {path} (paths: {', '.join(self.ROUTES)})")
            if method != self.ROUTES[path]:
                raise RequestError(405, f"{method} {path}: use {self.ROUTES[path]}")
            status, body = self.handle_route(path)
        except RequestError as e:
            status, body = e.status, {"error": {"message": str(e), "type": ERROR_TYPES.get(e.status, "error"),
                                                "code": e.status}}
        except (ConnectionError, TimeoutError) as e:  # the client went away or stalled: no one to answer
            self.log(f"{method} {path} client gone ({type(e).__name__})", t0)
            self.close_connection = True
            return
        except Exception as e:  # a bug: answer 500 and keep serving; the traceback is for the operator
            traceback.print_exc()
            status, body = 500, {"error": {"message": f"internal error: {type(e).__name__}: {e}", "type": "internal",
                                           "code": 500}}
        if not self.body_read:
            self.drain_body()
        self.reply(status, body, method, allow=self.ROUTES.get(path))
        self.log(f"{method} {path} {status}" + (f" {self.n_docs} docs" if self.n_docs else ""), t0)

    def handle_route(self, path: str):
        srv = self.server
        if path == "/health":
            if not srv.ready.is_set():
                return 503, {"status": "loading"}
            return 200, {"status": "ok", "model": srv.model_name}
        if path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": srv.model_name, "object": "model", "created": srv.started,
                                                     "owned_by": "erank"}]}
        body = parse_body(self.read_body())
        if path == "/rerank" and "texts" in body:
            req = parse_tei(body, srv.limits)
        elif path == "/rerank" and "documents" not in body:
            raise RequestError(422, "request body: expected 'texts' (text-embeddings-inference) "
                                    "or 'documents' (Cohere)")
        else:
            req = parse_cohere(body, srv.limits, version="2" if path == "/v2/rerank" else "1")
        self.n_docs = len(req.texts)
        if not srv.ready.is_set():
            raise RequestError(503, "the model is still loading; retry when GET /health answers 200")
        try:
            prepared = srv.reranker.prepare(req.query, req.texts)
        except R.InputError as e:  # the fields are checked above; this is a last guard
            raise RequestError(422, str(e)) from None
        records = srv.batcher.submit(prepared)
        return 200, response_for(req, records, prepared, srv.reranker, srv.model_name)

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(411, "request body: chunked transfer encoding is not supported; send Content-Length")
        length = self.headers.get("Content-Length")
        try:
            n = int(length) if length is not None else 0
        except ValueError:
            raise RequestError(400, f"header Content-Length: not a number ({length!r})") from None
        if n < 0:
            raise RequestError(400, f"header Content-Length: negative ({n})")
        if n > self.server.limits.max_body_bytes:
            raise RequestError(413, f"request body: {n} bytes, more than the server's limit of "
                                    f"{self.server.limits.max_body_bytes} (--max-body-bytes)")
        self.body_read = True
        try:
            raw = self.rfile.read(n)
        except TimeoutError:
            raise RequestError(408, f"request body: not received within {self.server.timeout_s:g} s") from None
        if len(raw) < n:  # the client closed the connection before sending it all
            raise ConnectionError(f"body cut short: {len(raw)} of {n} bytes")
        return raw

    def drain_body(self):
        """Read and drop a body that is not used (a 404, 405 or 413), up to 4 * --max-body-bytes:
        closing a socket with unread data sends the client a reset, which can destroy the answer
        before the client reads it."""
        self.body_read = True
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return
        n = n if n <= 4 * self.server.limits.max_body_bytes else 0  # a larger one: not worth reading
        try:
            while n > 0:
                chunk = self.rfile.read(min(n, 1 << 16))
                if not chunk:
                    return
                n -= len(chunk)
        except (ConnectionError, TimeoutError):
            return

    def reply(self, status: int, body, method: str, allow=None):
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            if status == 405 and allow:
                self.send_header("Allow", allow)
            if status == 503:
                self.send_header("Retry-After", "1")
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)
        except (ConnectionError, TimeoutError):
            pass  # the client left before its answer: nothing to do
        self.close_connection = True

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line or header, an unknown method such
        as BREW): the same JSON error body as every other error."""
        message = message or http.HTTPStatus(code).phrase
        kind = ERROR_TYPES.get(code, "invalid_request")
        self.reply(code, {"error": {"message": message, "type": kind, "code": code}}, self.command or "GET")

    def log(self, what: str, t0: float):
        if not self.server.quiet:
            print(f"{self.client_address[0]} {what} {time.perf_counter() - t0:.3f}s", file=sys.stderr, flush=True)

    def log_request(self, code="-", size="-"):  # dispatch logs each request itself, with its time
        pass

    def log_message(self, format, *args):  # http.server's own lines (malformed request lines): one line each
        if not self.server.quiet:
            print(f"{self.client_address[0]} {format % args}", file=sys.stderr, flush=True)


class RerankServer(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer that, on server_close(), waits for the requests in flight to finish
    (non-daemon connection threads, joined), and holds the model's state for the handlers."""

    daemon_threads = False
    block_on_close = True
    request_queue_size = 128  # the listen backlog (socketserver's default, 5, overflows when clients arrive together)

    def __init__(self, address, limits: Limits, timeout_s: float = 30.0, quiet=False):
        super().__init__(address, Handler)
        self.limits, self.timeout_s, self.quiet = limits, timeout_s, quiet
        self.ready = threading.Event()
        self.reranker = self.batcher = None
        self.model_name = None
        self.started = int(time.time())

    def attach(self, reranker: R.Reranker, model_name: str, batch_tokens: int, batch_wait: float, start=True):
        """Serve this reranker from now on: start its scoring thread and answer /health with 200."""
        self.reranker, self.model_name = reranker, model_name
        self.batcher = Batcher(reranker, batch_tokens, batch_wait, self.limits.max_pending)
        if start:
            self.batcher.start()
        self.ready.set()

    def handle_error(self, request, client_address):  # a connection error outside a request: one line
        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError)):
            if not self.quiet:
                print(f"{client_address[0]} connection error ({type(e).__name__})", file=sys.stderr)
            return
        super().handle_error(request, client_address)

    def close(self):
        """Stop accepting, finish the requests in flight, stop the scoring thread."""
        self.shutdown()  # serve_forever returns
        self.server_close()  # the listening socket closes, then connection threads are joined
        if self.batcher is not None and self.batcher.thread.is_alive():
            self.batcher.stop()


def warm_up(reranker: R.Reranker):
    """One pair through the model before /health says ok: the first call's one-time costs (memory,
    kernel choice, the plain tokenizer copy) are not paid by the first client."""
    reranker.rank([reranker.prepare("warm up", ["a document"])])


# ----------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description="Serve an ERank reranker over HTTP (Cohere, Jina and TEI request shapes).",
                                 formatter_class=R.HelpFormatter)
    g = ap.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    g.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free port)")
    g.add_argument("--max-documents", type=R.positive_int, default=Limits.max_documents,
                   help="most documents in one request (more: 413)")
    g.add_argument("--max-body-bytes", type=R.positive_int, default=Limits.max_body_bytes,
                   help="largest request body (larger: 413)")
    g.add_argument("--max-pending", type=R.positive_int, default=Limits.max_pending,
                   help="requests waiting for the model at most (more: 503)")
    g.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long the scoring thread waits for requests arriving together before it scores")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds a client has to send its request")
    g.add_argument("--quiet", action="store_true", help="no line per request on stderr")
    R.add_model_args(ap)
    R.add_scoring_args(ap)
    args = ap.parse_args(argv)
    try:
        R.check_model_args(args)
        if not 0 <= args.port <= 65535:
            raise R.InputError(f"--port {args.port}: expected 0..65535")
        if args.batch_wait_ms < 0 or args.timeout <= 0:
            raise R.InputError("--batch-wait-ms must be >= 0 and --timeout > 0")
        limits = Limits(args.max_documents, args.max_body_bytes, args.max_pending)
        try:
            server = RerankServer((args.host, args.port), limits, args.timeout, args.quiet)
        except OSError as e:
            raise R.InputError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    except R.InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    print(f"listening on http://{host}:{port} (GET /health answers 503 until the model is loaded)",
          file=sys.stderr, flush=True)
    try:
        reranker = R.reranker_from_args(args)
        reranker.verbose = False  # no progress bars or per-query warnings in a server's log
        warm_up(reranker)
    except R.InputError as e:
        print(f"error: {e}", file=sys.stderr)
        server.close()
        return 2
    except KeyboardInterrupt:
        server.close()
        return 130
    # the name /v1/models and responses give: a hub id as given, else the checkpoint directory's name
    name = args.model if args.model and not os.path.isdir(args.model) else \
        os.path.basename(os.path.abspath(reranker.path))
    server.attach(reranker, name, args.batch_tokens, args.batch_wait_ms / 1000)

    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():  # the second Ctrl-C: do not wait
            os._exit(130)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"serving {name} on http://{host}:{port} (POST /v1/rerank, /v2/rerank, /rerank; Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    # a short timeout, not stop.wait(): the kernel may deliver SIGTERM to another thread, and Python
    # runs handlers in the main thread only when it wakes; an untimed wait could sleep through it
    while not stop.wait(0.2):
        pass
    print("stopping: finishing the requests in flight", file=sys.stderr, flush=True)
    server.close()
    print("stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The worker process that runs every sympy step (and the whole grading of long answers, and every Math-Verify
verdict) under a timeout, and ``math_equal``, which decides what the cheap in-process rules can and hands the rest
to it."""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import subprocess
import threading

from .equal import _defer_symbolic, _math_equal, _NeedsSymbolic
from .extract import _prediction, _prepare_from_field
from .symbolic import _symbolic_equal

logger = logging.getLogger("lightreasoner.grading")

WORKER_MEMORY_BYTES = 4 << 30  # address-space cap of the worker process
WORKER_START_TIMEOUT = 120.0  # seconds allowed for the worker to import sympy and warm up
DEFAULT_TIMEOUT = 3.0  # seconds per symbolic comparison: the toolkit's pebble timeout
# Bounds on grading one answer. A completion (plus its raw gold) longer than INPROCESS_MAX_CHARS is graded whole
# (cleaning, extraction, every rule) in the worker under the timeout; the cheap in-process path only ever sees
# shorter text, on which every step is linear. Text longer than MAX_TEXT_CHARS (some 50 times the longest
# 2048-token completion) is not graded at all: wrong, with the reason.
INPROCESS_MAX_CHARS = 20_000
MAX_TEXT_CHARS = 400_000


def _worker_reply(request: dict) -> dict:
    """The worker's answer to one request: ``{"pred", "gold"}`` -> ``{"ok"}`` (the full ``math_equal``), or
    ``{"rules", "gold", "completion"}`` (``gold``: the raw gold field) -> ``{"pred", "gold", "ok"}`` (the whole
    grading of one answer); with ``"stored": true`` ``gold`` is a toolkit file's stored gold instead; with
    ``"math_verify": kind``, Math-Verify's verdict (:func:`.mathverify.verdict`); ``{"warm": "math-verify"}``
    loads Math-Verify (asked once per worker, before its first verdict, so no verdict's timeout pays for it)."""
    if request.get("warm") == "math-verify":
        from .mathverify import warm_up

        warm_up()
        return {"ok": True}
    if "math_verify" in request:
        from .mathverify import verdict

        return verdict(request["gold"], request["math_verify"], request["completion"])
    if request.get("stored"):
        gold = request["gold"]
        pred = _prediction(request["rules"], gold, request["completion"])
        return {"pred": pred, "gold": gold, "ok": bool(_math_equal(pred, gold, _symbolic_equal))}
    if "completion" in request:
        pred, _, gold = _prepare_from_field(request["rules"], request["gold"], request["completion"])
        return {"pred": pred, "gold": gold, "ok": bool(_math_equal(pred, gold, _symbolic_equal))}
    return {"ok": bool(_math_equal(request["pred"], request["gold"], _symbolic_equal))}


def _serve_symbolic() -> None:
    """The worker's main loop: one JSON request per stdin line (see :func:`_worker_reply`), one JSON reply, or
    ``{"error": str}``, per line on the original stdout (sys.stdout itself goes to /dev/null, since antlr prints
    version notices there). Starts by capping its memory and warming up the parsers, then announces
    ``{"ready": true}``, so that no request's timeout pays for imports."""
    import sys
    import warnings

    protocol = os.fdopen(os.dup(1), "w", encoding="ascii")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")
    warnings.simplefilter("ignore")
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):  # pragma: no cover - platform without rlimits
        pass
    _symbolic_equal("\\frac{1}{2}", "0.5")
    _symbolic_equal("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "x^2")
    _symbolic_equal("2*x**2", "x**2+x**2")
    protocol.write('{"ready": true}\n')
    protocol.flush()
    for line in sys.stdin:
        try:
            reply = _worker_reply(json.loads(line))
        except Exception as e:  # noqa: BLE001 - MemoryError and RecursionError included: a wrong answer
            reply = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


class _SymbolicWorker:
    """A long-lived worker process for the symbolic step and for over-long answers (started on first use, reused
    across calls, killed and restarted after a timeout or a crash). A plain subprocess running
    :func:`_serve_symbolic`, talking JSON lines over pipes: no fork of the (possibly multi-threaded, torch-loaded)
    parent, no pickling, no main-module re-import."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._owner = os.getpid()  # a forked child must not talk to its parent's worker
        self._buffer = b""
        self._lock = threading.Lock()
        self._warm: set[str] = set()  # the optional parts loaded in the running worker

    def _start(self) -> None:
        import sys

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._buffer, self._warm = b"", set()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from lightreasoner.grading import _serve_symbolic; _serve_symbolic()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        try:
            ready = self._read_line(WORKER_START_TIMEOUT)
        except (TimeoutError, EOFError, OSError):
            self._kill()
            raise RuntimeError("the symbolic worker did not start (see its error output above)") from None
        if json.loads(ready) != {"ready": True}:
            self._kill()
            raise RuntimeError(f"the symbolic worker said {ready!r} instead of ready")

    def _read_line(self, timeout: float) -> bytes:
        import select
        import time

        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        chunks = [self._buffer]
        while b"\n" not in chunks[-1]:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                self._buffer = b"".join(chunks)
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
        line, _, self._buffer = b"".join(chunks).partition(b"\n")
        return line

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
            self._proc = None

    def _send(self, request: dict) -> None:
        self._proc.stdin.write(json.dumps(request).encode("ascii") + b"\n")
        self._proc.stdin.flush()

    def _warm_up(self, part: str) -> None:
        """Load an optional part (``math-verify``) in the running worker once, under the start-up timeout."""
        if part in self._warm:
            return
        self._send({"warm": part})
        try:
            reply = json.loads(self._read_line(WORKER_START_TIMEOUT))
        except (TimeoutError, EOFError, OSError, ValueError):
            self._kill()
            raise RuntimeError(f"the grading worker could not load {part}") from None
        if reply != {"ok": True}:
            raise RuntimeError(f"the grading worker could not load {part}: {reply.get('error', reply)}")
        self._warm.add(part)

    def _ask(self, request: dict, timeout: float, task: str,
             warm: str | None = None) -> tuple[dict | None, str | None]:
        """(reply, None) or (None, reason) for one request; the timeout starts when the request has been sent to
        the idle, warmed-up worker (``warm``: an optional part it needs loaded first). A timeout or a dead worker
        gives the reason (``task`` names the work)."""
        with self._lock:
            if self._owner != os.getpid():
                self._proc, self._owner = None, os.getpid()
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._kill()
                    self._start()
                if warm is not None:
                    self._warm_up(warm)
                self._send(request)
                reply = json.loads(self._read_line(timeout))
            except TimeoutError:
                logger.debug("%s timed out after %gs; restarting the worker", task, timeout)
                self._kill()
                return None, f"timeout: {task} took more than {timeout:g}s"
            except (EOFError, OSError, ValueError) as e:
                logger.warning("the symbolic worker died (%s); it will be restarted", type(e).__name__)
                self._kill()
                return None, f"the symbolic worker died ({type(e).__name__})"
            except RuntimeError as e:
                logger.warning("%s", e)
                return None, str(e)
        if "error" in reply:
            return None, f"{task} failed: {reply['error']}"
        return reply, None

    def compare(self, pred: str, gold: str, timeout: float) -> tuple[bool, str | None]:
        """(verdict, error) of the full ``math_equal`` in the worker; a timeout is a wrong answer with the
        reason."""
        reply, error = self._ask({"pred": pred, "gold": gold}, timeout, "the symbolic comparison")
        return (False, error) if reply is None else (bool(reply["ok"]), None)

    def grade(self, rules: str, gold_field: str, completion: str,
              timeout: float) -> tuple[str | None, str, bool, str | None]:
        """(prediction, gold, verdict, error) of the whole grading of one answer in the worker (``gold_field``: the
        raw gold as text); a timeout is a wrong answer with the reason."""
        request = {"rules": rules, "gold": gold_field, "completion": completion}
        return self._verdict(request, timeout, f"grading this answer ({len(completion)} characters)")

    def grade_stored(self, rules: str, gold: str, completion: str,
                     timeout: float) -> tuple[str | None, str, bool, str | None]:
        """As :meth:`grade`, against a gold stored in a toolkit file (compared as it is)."""
        request = {"rules": rules, "gold": gold, "completion": completion, "stored": True}
        return self._verdict(request, timeout, f"grading this answer ({len(completion)} characters)")

    def math_verify(self, gold: str, kind: str, completion: str,
                    timeout: float) -> tuple[str | None, str, bool, str | None]:
        """(prediction, gold, verdict, error) of Math-Verify on one answer (:mod:`.mathverify`); a timeout is a
        wrong answer with the reason."""
        request = {"math_verify": kind, "gold": gold, "completion": completion}
        return self._verdict(request, timeout, f"Math-Verify on this answer ({len(completion)} characters)",
                             warm="math-verify")

    def _verdict(self, request: dict, timeout: float, task: str,
                 warm: str | None = None) -> tuple[str | None, str, bool, str | None]:
        reply, error = self._ask(request, timeout, task, warm)
        if reply is None:
            return None, "", False, error
        return reply["pred"], reply["gold"], bool(reply["ok"]), None

    def close(self) -> None:
        with self._lock:
            if self._owner == os.getpid():
                self._kill()


_WORKER = _SymbolicWorker()
atexit.register(_WORKER.close)


def _cheap_verdict(pred: str | None, gold: str | None) -> bool | None:
    """The verdict when no symbolic step is needed, else ``None``."""
    try:
        return _math_equal(pred, gold, _defer_symbolic)
    except _NeedsSymbolic:
        return None


def _too_long(what: str, text: str) -> str | None:
    """The reason ``text`` is not graded (longer than :data:`MAX_TEXT_CHARS`), else ``None``."""
    if len(text) > MAX_TEXT_CHARS:
        return f"{what} too long: {len(text)} characters > {MAX_TEXT_CHARS} (not graded)"
    return None


def _judge(pred: str | None, gold: str | None, timeout: float) -> tuple[bool, str | None]:
    """(verdict, error): the cheap rules here, the whole comparison in the worker when sympy is needed or the
    texts are long (over-long ones are not compared)."""
    if pred is not None and gold is not None:
        reason = _too_long("answer", pred) or _too_long("gold", gold)
        if reason:
            return False, reason
        if len(pred) + len(gold) > INPROCESS_MAX_CHARS:
            return _WORKER.compare(pred, gold, timeout)
    try:
        verdict = _cheap_verdict(pred, gold)
    except Exception as e:  # noqa: BLE001 - e.g. RecursionError on absurd input: wrong, with the reason
        return False, f"{type(e).__name__}: {e}"
    if verdict is not None:
        return verdict, None
    return _WORKER.compare(pred, gold, timeout)


def _check_timeout(timeout: float) -> None:
    """Refuse a timeout that is not a finite number > 0 (NaN or infinity would make every wait misbehave)."""
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number > 0, got {timeout}")


def math_equal(pred: str | None, gold: str | None, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """The toolkit's ``math_equal``; the symbolic step runs in the worker and counts as wrong after ``timeout`` s."""
    _check_timeout(timeout)
    return _judge(pred, gold, timeout)[0]

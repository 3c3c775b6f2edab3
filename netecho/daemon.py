"""
The daemon's top service: starting every listener or none, signals,
``--exit-on-stop``, systemd notifications and the summary line on stop.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import time
from typing import Callable

from twisted.application import service
from twisted.internet import task
from twisted.internet.error import ReactorNotRunning
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    Logger,
    formatEvent,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python import logfile
from zope.interface import provider

from netecho.address import join_host_port, unmap
from netecho.listeners import ListenerError
from netecho.notify import sd_notify
from netecho.stats import Stats
from netecho.throttle import ThrottledLog

log = Logger()


def report_fatal(message: str) -> None:
    """
    Say why the daemon cannot start: on the real stderr when there is one
    (twistd replaced C{sys.stderr} with a logger), in the log otherwise.
    """
    log.critical("{message}", message=message)
    try:
        devnull = os.path.samestat(os.fstat(2), os.stat(os.devnull))
    except OSError:
        devnull = True
    if not devnull:
        os.write(2, f"netecho: {message}\n".encode("utf-8", "backslashreplace"))


#: Old log files twistd's size-based rotation (and SIGUSR1) keeps:
#: LOG.1 ... LOG.10, 1 MB each (twistd's own default keeps every one).
ROTATED_LOG_FILES = 10

#: Twisted's accept loop (twisted.internet.tcp._accept) logs these when the
#: process is out of file descriptors: two lines per refusal burst and one
#: per refused client. Each maps to the drop it counts as (None: not counted).
ACCEPT_EVENTS = {
    "EMFILE encountered; releasing reserved file descriptor.": None,
    "EMFILE recovery: Closed socket from {address}": "fd_limit",
    "Re-reserving EMFILE recovery file descriptor.": None,
    "Could not accept new connection ({acceptError})": "accept_error",
}

#: Fields of a twisted.logger event that become C{time}, C{level}, C{logger}
#: and C{msg} (or are objects) in a JSON line; C{log_format} and
#: C{log_namespace} are kept for readers of the earlier JSON format.
_JSON_HIDDEN = frozenset(
    ("log_time", "log_level", "log_logger", "log_source", "log_failure", "log_io",
     "log_trace", "log_legacy", "log_text", "log_flattened", "log_system", "time",
     "level", "logger", "msg", "message", "format", "isError", "failure", "why", "system")
)


def json_line(event: dict) -> str:
    """
    One log event as one line of JSON (NDJSON, no RFC 7464 record
    separator): C{time} (ISO 8601, UTC), C{level}, C{logger} (the
    namespace), C{msg} (the rendered text), C{traceback} for a failure,
    then the event's own fields.
    """
    when = event.get("log_time")
    if not isinstance(when, (int, float)):
        when = time.time()
    stamp = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    level = event.get("log_level")
    record = {
        "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "logger": event.get("log_namespace", "-"),
        "msg": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = repr(failure)
    for key, value in event.items():
        if key in _JSON_HIDDEN or key.startswith("_") or key in record:
            continue
        if key.startswith("log_") and key not in ("log_format", "log_namespace"):
            continue
        record[key] = value
    try:
        return json.dumps(record, default=repr) + "\n"
    except (TypeError, ValueError):  # e.g. a dict with tuple keys
        return json.dumps({k: v if isinstance(v, str) else repr(v) for k, v in record.items()}) + "\n"


class AcceptErrors:
    """
    Twisted's out-of-descriptors lines (L{ACCEPT_EVENTS}) in a log: each
    becomes a refusal counted once L{count_refusals} is called, and one
    rate-limited line. The daemon's log (L{TwistdLog}) and every worker's
    (L{netecho.workers}) go through this one rule.
    """

    def __init__(self) -> None:
        self._refused: Callable[[str], None] | None = None
        self._throttled = ThrottledLog(log)

    def count_refusals(self, refused: Callable[[str], None]) -> None:
        """Count accepts refused for want of descriptors with C{refused(reason)}."""
        self._refused = refused

    def filtered(self, observer):
        """C{observer}, with Twisted's accept-error events replaced by this rule."""
        accept_events = ACCEPT_EVENTS

        @provider(ILogObserver)
        def observe(event):
            fmt = event.get("log_format")
            if fmt in accept_events:
                self._accept_failed(event, accept_events[fmt])
                return
            observer(event)

        return observe

    def _accept_failed(self, event, reason: str | None) -> None:
        if reason is None:
            return
        if self._refused is not None:
            self._refused(reason)
        if reason == "fd_limit":
            address = event.get("address")
            if isinstance(address, tuple) and len(address) >= 2:
                address = join_host_port(unmap(str(address[0])), address[1])
            self._throttled.warn(
                reason,
                "out of file descriptors: refused a connection from {address} "
                "(raise the limit: LimitNOFILE= or ulimit -n)",
                address=address or "a Unix socket client",
            )
        else:
            self._throttled.warn(
                reason, "could not accept a connection: {error}", error=event.get("acceptError", "?")
            )


class TwistdLog(AcceptErrors):
    """
    twistd's log as netecho writes it: twistd's C{--logfile} (standard
    output with C{--nodaemon} and no file, or C{-}), as text or as JSON
    lines, on a log file that SIGHUP reopens at its path (what logrotate
    expects after it moved the file) and that size-based rotation and
    SIGUSR1 rotate keeping L{ROTATED_LOG_FILES} old files. Twisted's
    out-of-descriptors lines go through L{AcceptErrors}.

    twistd builds its log observer before the service starts, from the
    factory named by its public C{--logger} option: L{use_for_twistd}
    names L{twistd_observer}, which builds this one's observer.
    """

    def __init__(self, twistd_options, log_format: str = "text") -> None:
        super().__init__()
        self.twistd_options = twistd_options
        self.log_format = log_format
        self.log_file: logfile.LogFile | None = None

    def observer(self):
        """The observer twistd starts logging to (called once, by twistd)."""
        options = self.twistd_options
        path = options.get("logfile") or ""
        nodaemon = options.get("nodaemon", False)
        if path == "-" and not nodaemon:
            sys.exit("Daemons cannot log to stdout, exiting!")  # as twistd says it
        if path == "-" or (nodaemon and not path):
            out = sys.stdout
        else:
            self.log_file = logfile.LogFile.fromFullPath(
                path or "twistd.log", maxRotatedFiles=ROTATED_LOG_FILES
            )
            out = self.log_file
        if self.log_format == "json":
            observer = FileLogObserver(out, json_line)
        else:
            observer = textFileLogObserver(out)
        self._install_signals()
        return self.filtered(observer)

    def _install_signals(self) -> None:
        # twistd installs its SIGUSR1 rotation only for its own observer,
        # and with --logfile=- nothing: SIGUSR1 then killed the daemon.
        signal.signal(signal.SIGHUP, self._on_signal)
        signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        from twisted.internet import reactor

        # Never touch the file or log from inside a signal handler (it may
        # have interrupted a write): do it on the reactor's next turn.
        reactor.callFromThread(self.handle_signal, signum)

    def handle_signal(self, signum: int) -> None:
        """SIGHUP: reopen the log file at its path; SIGUSR1: rotate it."""
        name = signal.Signals(signum).name
        if self.log_file is None:
            what = "no file to reopen" if signum == signal.SIGHUP else "no file to rotate"
            log.info("{signal} ignored: the log goes to standard output, {what}", signal=name, what=what)
            return
        try:
            if signum == signal.SIGHUP:
                self.log_file.reopen()
                done = "reopened"
            else:
                self.log_file.rotate()
                done = "rotated"
        except OSError as e:
            log.error("{signal}: cannot {action} {path}: {why}", signal=name,
                      action="reopen" if signum == signal.SIGHUP else "rotate",
                      path=self.log_file.path, why=e.strerror or e)
            return
        log.info("{signal}: log file {path} {done}; still serving", signal=name,
                 path=self.log_file.path, done=done)


#: The log twistd was told to build through C{--logger} (L{use_for_twistd}).
_twistd_log: TwistdLog | None = None


def twistd_observer():
    """twistd's C{--logger} factory: the observer of L{use_for_twistd}'s log."""
    if _twistd_log is None:
        raise RuntimeError("netecho's log was not configured (netecho.daemon.use_for_twistd)")
    return _twistd_log.observer()


def use_for_twistd(twistd_options, log_format: str) -> TwistdLog | None:
    """
    Have twistd log through netecho's L{TwistdLog} (in C{log_format}) by
    naming L{twistd_observer} as its C{--logger}; called while twistd parses
    its options. Nothing changes when twistd was told to log elsewhere
    (C{--logger}, C{--syslog}).

    @return: the log, or None when twistd logs elsewhere.
    @raise ValueError: C{log_format} is json and twistd logs elsewhere.
    """
    global _twistd_log
    if twistd_options is None:
        return None
    for option in ("logger", "syslog"):
        if twistd_options.get(option):
            if log_format == "json":
                raise ValueError(f"cannot be json with twistd's --{option}, which picks the log's format")
            return None
    _twistd_log = TwistdLog(twistd_options, log_format)
    twistd_options["logger"] = f"{__name__}.twistd_observer"
    return _twistd_log


class NetechoService(service.MultiService):
    """
    Parent of every listener. Owns the counters and the ways to stop.

    @ivar stop_signal: an extra signal number that stops the daemon, or None.
    """

    def __init__(
        self,
        reactor,
        stats: Stats,
        exit_on_stop: bool = False,
        stop_signal: int | None = None,
        twistd_log: TwistdLog | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.stats = stats
        self.exit_on_stop = exit_on_stop
        self.stop_signal = stop_signal
        self.twistd_log = twistd_log
        self._stopping = False
        self._notifier: task.LoopingCall | None = None
        self._watchdog = False
        #: With --workers: the L{netecho.workers.Supervisor} of the worker processes.
        self.workers = None
        self._exit_status = 0
        self._announced = False

    def privilegedStartService(self) -> None:
        if self.twistd_log is not None:
            self.twistd_log.count_refusals(self.stats.drop)
        started = []
        try:
            for child in self:
                child.privilegedStartService()
                started.append(child)
        except ListenerError as e:
            for child in started:
                child.stopService()
            report_fatal(str(e))
            raise SystemExit(1) from None

    def startService(self) -> None:
        super().startService()
        if self.exit_on_stop:
            log.warn(
                "--exit-on-stop is on: a stop word from any client stops the whole daemon"
            )
        self._install_signals()
        self.reactor.callWhenRunning(self._ready)
        self.reactor.addSystemEventTrigger("before", "shutdown", sd_notify, "STOPPING=1")

    def _ready(self) -> None:
        self._ignore_repeated_stop_signals()
        if self.workers is not None:  # ready once every worker serves
            self.workers.serving.addCallback(lambda _: self._announce())
            return
        self._announce()

    def is_ready(self) -> bool:
        """
        Whether the daemon serves (what C{/ready} on the metrics site says):
        it has announced itself ready, is not stopping, and with
        C{--workers} every worker serves right now.
        """
        if not (self._announced and self.running):
            return False
        return self.workers is None or self.workers.all_serving()

    def _announce(self) -> None:
        self._announced = True
        listeners = [c.name for c in self if hasattr(c, "listener")]
        log.info("netecho ready: {listeners}", listeners=", ".join(listeners))
        if sd_notify("READY=1\n" + self._status()):
            self._notifier = task.LoopingCall(self._notify)
            self._notifier.clock = self.reactor
            self._notifier.start(self._notify_interval(), now=False)

    def _ignore_repeated_stop_signals(self) -> None:
        # The reactor installed its SIGTERM/SIGINT handlers by now. A second
        # signal while stopping would make it call stop() again and log a
        # ReactorNotRunning traceback: let only the first one through.
        for signum in (signal.SIGTERM, signal.SIGINT):
            handler = signal.getsignal(signum)
            if not callable(handler):
                continue

            def first_only(number, frame, handler=handler):
                if self._stopping:
                    return
                self._stopping = True
                handler(number, frame)

            signal.signal(signum, first_only)

    def _status(self) -> str:
        return "STATUS=" + self.stats.summary().removeprefix("summary: ")

    def _notify_interval(self) -> float:
        # Half the watchdog period when systemd asks for one (WATCHDOG_USEC),
        # else a STATUS= refresh every 10 s for 'systemctl status'.
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", str(os.getpid()))
        if usec.isdigit() and int(usec) > 0 and pid == str(os.getpid()):
            self._watchdog = True
            return min(int(usec) / 2e6, 10.0)
        self._watchdog = False
        return 10.0

    def _notify(self) -> None:
        sd_notify(("WATCHDOG=1\n" if self._watchdog else "") + self._status())

    def _install_signals(self) -> None:
        reactor = self.reactor
        # With netecho's log (TwistdLog) SIGHUP and SIGUSR1 reopen and rotate
        # it. Otherwise (twistd's --syslog or --logger) they must still
        # neither stop the daemon (SIGHUP's default) nor kill it (SIGUSR1's).
        for signum in (signal.SIGHUP, signal.SIGUSR1):
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                signal.signal(signum, self._on_log_signal)
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name

            def on_stop(signum, frame):
                reactor.callFromThread(self.stop_daemon, f"{name} received")

            signal.signal(self.stop_signal, on_stop)

    def _on_log_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        self.reactor.callFromThread(
            log.info, "{signal} ignored: twistd's --syslog or --logger writes the log", signal=name
        )

    def stop_word_heard(self) -> None:
        """A client said the stop word and C{--exit-on-stop} is on."""
        self.stop_daemon("stop word received with --exit-on-stop")

    def stop_daemon(self, why: str) -> None:
        """Stop the reactor (exit status 0) on a later turn."""
        if self._stopping:
            return
        self._stopping = True
        log.info("stopping: {why}", why=why)
        self.reactor.callLater(0, self._stop_reactor)

    def _stop_reactor(self) -> None:
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping (SIGTERM at the same moment)

    def fail_daemon(self, why: str) -> None:
        """Stop the daemon cleanly, then exit with status 1 (L{exit_after_twistd})."""
        if self._exit_status == 0:
            self._exit_status = 1
            exit_after_twistd(1)
        self.stop_daemon(why)

    def stopService(self):
        if self._notifier is not None and self._notifier.running:
            self._notifier.stop()
        d = super().stopService()
        if self.workers is not None:
            # The workers' last counts arrive as they end: sum them then.
            return d.addCallback(lambda result: (self._log_summary(), result)[1])
        self._log_summary()
        return d

    def _log_summary(self) -> None:
        stats = self.stats.combined()
        log.info("{summary}", summary=stats.summary())
        if stats.dropped:
            drops = " ".join(f"{k}={v}" for k, v in sorted(stats.dropped.items()))
            log.info("dropped: {drops}", drops=drops)
        if stats.faults:
            injected = " ".join(f"{k}={v}" for k, v in sorted(stats.faults.items()))
            log.info("faults: {injected}", injected=injected)


#: twistd's last log line: its runner logs it once the reactor has returned,
#: the services have stopped and the pidfile is gone (AppLogger.stop).
TWISTD_DONE = "Server Shut Down."


def exit_after_twistd(status: int, publisher=globalLogPublisher) -> None:
    """
    Have twistd's process exit with C{status} once twistd is done.

    twistd exits 0 after any stop: the only outcome it passes on is the
    signal that stopped the reactor. So the end of twistd's last log line
    (L{TWISTD_DONE}) raises C{SystemExit(status)}: log observers' failures
    are caught as C{Exception}, so it leaves twistd's runner at the point
    where twistd would return, and Python exits as ever (exit handlers run,
    files are flushed). Observers added before this one have seen the line.
    """

    @provider(ILogObserver)
    def exit_when_done(event):
        if event.get("log_format") == TWISTD_DONE:
            publisher.removeObserver(exit_when_done)
            raise SystemExit(status)

    publisher.addObserver(exit_when_done)

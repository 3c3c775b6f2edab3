"""
The daemon's top service: starting every listener or none, signals,
``--exit-on-stop``, systemd notifications and the summary line on stop.
"""

from __future__ import annotations

import os
import signal

from twisted.application import service
from twisted.internet import task
from twisted.internet.error import ReactorNotRunning
from twisted.logger import FileLogObserver, Logger, globalLogPublisher, jsonFileLogObserver

from netecho.listeners import ListenerError
from netecho.notify import sd_notify
from netecho.stats import Stats

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


def use_json_log(publisher=None) -> int:
    """
    Turn twistd's text log files into JSON ones (twisted.logger's
    jsonFileLogObserver: one record a line, for log shippers), writing where
    twistd's observers wrote. twistd offers no option for this; its
    observers are there by the time services start.

    @return: how many observers were switched.
    """
    publisher = publisher if publisher is not None else globalLogPublisher
    switched = 0
    for observer in list(publisher._observers):
        if isinstance(observer, FileLogObserver):
            publisher.removeObserver(observer)
            publisher.addObserver(jsonFileLogObserver(observer._outFile))
            switched += 1
    return switched


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
        log_format: str = "text",
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.stats = stats
        self.exit_on_stop = exit_on_stop
        self.stop_signal = stop_signal
        self.log_format = log_format
        self._stopping = False
        self._notifier: task.LoopingCall | None = None
        self._watchdog = False

    def privilegedStartService(self) -> None:
        if self.log_format == "json":
            use_json_log()
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
        rotate = signal.getsignal(signal.SIGUSR1)

        def on_hup(signum, frame):
            # twistd rotates (reopens) its --logfile on SIGUSR1; SIGHUP does
            # the same here instead of killing the daemon.
            if callable(rotate):
                rotate(signum, frame)
            reactor.callFromThread(log.info, "SIGHUP: log reopened, still serving")

        signal.signal(signal.SIGHUP, on_hup)
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name

            def on_stop(signum, frame):
                reactor.callFromThread(self.stop_daemon, f"{name} received")

            signal.signal(self.stop_signal, on_stop)

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

    def stopService(self):
        if self._notifier is not None and self._notifier.running:
            self._notifier.stop()
        d = super().stopService()
        log.info("{summary}", summary=self.stats.summary())
        if self.stats.dropped:
            drops = " ".join(f"{k}={v}" for k, v in sorted(self.stats.dropped.items()))
            log.info("dropped: {drops}", drops=drops)
        return d

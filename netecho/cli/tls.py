"""
TLS for the clients (``netecho tcp --tls``, ``netecho ping tls``, and later
``netecho bench --tls``): the options, the connection creator built from
them with Twisted's TLS (L{optionsForClientTLS}, used through
L{endpoints.wrapClientTLS}), and failures worded in one line.
"""

from __future__ import annotations

import argparse
import re
import ssl as stdlib_ssl
import sys

from OpenSSL import SSL, crypto
from twisted.internet import endpoints, error, ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    eventAsText,
    globalLogBeginner,
)
from zope.interface import implementer

from netecho.address import is_ip
from netecho.errors import UserError, dial_error

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)

#: What every client prints once when --insecure turns verification off.
INSECURE_WARNING = "netecho: warning: --insecure: the server's certificate is not verified\n"


def add_options(parser: argparse.ArgumentParser, switch: bool = True) -> None:
    """
    Add C{--ca --insecure --sni --cert --key} to C{parser}, and C{--tls}
    too when C{switch} (a command where TLS is a choice, not the transport).
    """
    group = parser.add_argument_group("TLS")
    if switch:
        group.add_argument("--tls", action="store_true", help="speak TLS to the server")
    add_trust_options(group)
    group.add_argument("--sni", metavar="NAME",
                       help="server name to send and to verify the certificate against (default: the host given)")
    group.add_argument("--cert", metavar="FILE", help="client certificate (PEM); needs --key")
    group.add_argument("--key", metavar="FILE", help="the client certificate's private key (PEM)")


def add_trust_options(group) -> None:
    """C{--ca FILE} and C{--insecure}, as every TLS client of netecho takes them (C{netecho lookup} too)."""
    group.add_argument("--ca", metavar="FILE",
                       help="trust the CA certificate(s) in FILE (PEM) instead of the system's trust store")
    group.add_argument("--insecure", action="store_true",
                       help="do not verify the server's certificate (a warning is printed)")


def usage_problem(args: argparse.Namespace, tls: bool | None = None) -> str | None:
    """A usage error in the TLS options as a sentence, or None."""
    tls = getattr(args, "tls", False) if tls is None else tls
    given = [f"--{name}" for name in ("ca", "insecure", "sni", "cert", "key") if getattr(args, name, None)]
    if not tls and given:
        return f"{' '.join(given)} needs --tls"
    if (args.cert is None) != (args.key is None):
        return "--cert and --key go together"
    if args.insecure and args.ca:
        return "--insecure and --ca exclude each other"
    return None


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"tls: cannot read {option} {path}: {(e.strerror or str(e)).lower()}") from None


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """A client connection creator that checks nothing (--insecure), SNI still sent."""

    def __init__(self, options: ssl.CertificateOptions, server_name: str) -> None:
        self._context = options.getContext()
        self._server_name = None if is_ip(server_name) else server_name.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._server_name:
            connection.set_tlsext_host_name(self._server_name)
        return connection


class ClientTLS:
    """
    TLS settings for connections to one server.

    @ivar creator: the L{IOpenSSLClientConnectionCreator} (Twisted's
        L{optionsForClientTLS} unless C{insecure}).
    @ivar server_name: the name sent (SNI) and verified.
    """

    def __init__(self, host: str, ca: str | None = None, insecure: bool = False,
                 sni: str | None = None, cert: str | None = None, key: str | None = None,
                 sni_option: str = "--sni") -> None:
        self.server_name = sni or host
        if not is_ip(self.server_name):
            try:
                self.server_name.encode("idna")
            except UnicodeError:
                raise UserError(f"tls: {self.server_name!r} is not a valid host name to verify "
                                f"({sni_option} NAME, or the host given)") from None
        self.ca = ca
        self.insecure = insecure
        client = None
        if cert is not None:
            pem = _read("--cert", cert) + b"\n" + _read("--key", key)
            try:
                client = ssl.PrivateCertificate.loadPEM(pem)
            except Exception as e:
                raise UserError(f"tls: cannot load --cert {cert} / --key {key}: {_ssl_reason(e)}") from None
        if insecure:
            extra = {}
            if client is not None:
                extra = dict(privateKey=client.privateKey.original, certificate=client.original)
            self.creator = _Unverified(ssl.CertificateOptions(**extra), self.server_name)
            return
        trust = None
        if ca is not None:
            blocks = _PEM_CERT.findall(_read("--ca", ca))
            if not blocks:
                raise UserError(f"tls: no PEM certificate in --ca {ca}")
            try:
                trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])
            except Exception as e:
                raise UserError(f"tls: cannot load --ca {ca}: {_ssl_reason(e)}") from None
        try:
            self.creator = ssl.optionsForClientTLS(self.server_name, trust, client)
        except (UnicodeError, ValueError) as e:  # IDNA's view of the name (IDNA 2008 is stricter)
            raise UserError(f"tls: {self.server_name!r} is not a valid host name to verify: {e}") from None

    @classmethod
    def from_args(cls, args: argparse.Namespace, host: str, warn=None, sni_option: str = "--sni",
                  warned: bool = False) -> "ClientTLS":
        """
        Settings from the parsed options; warns on C{warn} (stderr) when
        insecure, unless C{warned} already. C{sni_option}: the command's
        option for the name to verify (C{--sni}; C{--tls-name} for lookup);
        C{--cert}/C{--key} where the command has them.
        """
        if args.insecure:
            if not warned:
                (warn or sys.stderr).write(INSECURE_WARNING)
                (warn or sys.stderr).flush()
        else:
            hide_identity_tracebacks()
        sni = getattr(args, sni_option.lstrip("-").replace("-", "_"))
        return cls(host, ca=args.ca, insecure=args.insecure, sni=sni, cert=getattr(args, "cert", None),
                   key=getattr(args, "key", None), sni_option=sni_option)

    def wrap(self, endpoint):
        """C{endpoint} (a TCP client endpoint) with TLS on top."""
        return endpoints.wrapClientTLS(self.creator, endpoint)

    def check(self, connection: SSL.Connection | None) -> str | None:
        """
        After the handshake: a reason to refuse the server, or None.

        Twisted's verification accepts a certificate without any
        subjectAltName for every name (service_identity raises
        CertificateError, not the VerificationError Twisted catches; Twisted
        logs it and goes on): check the name again with service_identity.
        """
        if self.insecure or connection is None:
            return None
        from service_identity import CertificateError, VerificationError
        from service_identity.pyopenssl import verify_hostname, verify_ip_address

        try:
            if is_ip(self.server_name):
                verify_ip_address(connection, self.server_name)
            else:
                verify_hostname(connection, self.server_name)
        except CertificateError as e:
            return f"certificate verify failed: {str(e).rstrip('.').replace('`', '')}"
        except VerificationError:
            return f"certificate verify failed: certificate is not valid for {self.server_name}"
        return None

    def failure(self, target: str, exc: BaseException, connection: SSL.Connection | None) -> UserError:
        """
        One line for a connection that failed before or during the
        handshake: C{tls 127.0.0.1:8443: certificate verify failed:
        self-signed certificate}; a failed TCP connect keeps the words of
        the other clients (C{dial tcp ...: connection refused}).
        """
        from service_identity import VerificationError

        if isinstance(exc, error.ConnectError) or connection is None:
            return dial_error("tcp", target, exc)
        if isinstance(exc, VerificationError):
            reason = f"certificate verify failed: certificate is not valid for {self.server_name}"
        elif isinstance(exc, SSL.Error):
            reason = _ssl_reason(exc)
            if "certificate verify failed" in reason:
                reason = "certificate verify failed: " + self._chain_reason(connection)
        elif isinstance(exc, (error.ConnectionDone, error.ConnectionLost)):
            reason = "connection closed during the handshake"
        else:
            reason = _ssl_reason(exc)
        return UserError(f"tls {target}: {reason}")

    def _chain_reason(self, connection: SSL.Connection) -> str:
        # OpenSSL's own words for why the chain failed (what Python's ssl
        # module and Go print): the server's chain, checked again.
        chain = connection.get_peer_cert_chain() or []
        if not chain:
            return "no certificate from the server"
        store = crypto.X509Store()
        try:
            if self.ca is not None:
                store.load_locations(self.ca)
            else:
                paths = stdlib_ssl.get_default_verify_paths()
                if paths.cafile or paths.capath:
                    store.load_locations(paths.cafile, paths.capath)
        except crypto.Error:
            pass
        try:
            crypto.X509StoreContext(store, chain[0], chain[1:]).verify_certificate()
        except crypto.X509StoreContextError as e:
            return str(e) or "untrusted certificate"
        return "untrusted certificate"


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, (SSL.Error, crypto.Error)) and exc.args and isinstance(exc.args[0], list):
        reasons = [r[-1] for r in exc.args[0] if isinstance(r, tuple) and r and r[-1]]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0]


def _not_identity_traceback(event) -> PredicateResult:
    if event.get("log_namespace", "").startswith("twisted.internet._sslverify"):
        return PredicateResult.no
    return PredicateResult.maybe


_hidden = []


def hide_identity_tracebacks() -> None:
    """
    In a command-line client: Twisted logs a traceback (at critical level,
    which goes to stderr before logging starts) for a certificate without a
    subjectAltName; L{ClientTLS.check} reports that in one line instead.
    Keep printing every other critical event as Twisted would.
    """
    if _hidden:
        return
    _hidden.append(True)
    stderr = FileLogObserver(
        sys.stderr, lambda event: eventAsText(event, includeTimestamp=False, includeSystem=False) + "\n"
    )
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(stderr, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.critical),
                                       _not_identity_traceback])],
        discardBuffer=True,
        redirectStandardIO=False,
    )

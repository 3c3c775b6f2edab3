"""
DNS over TLS against in-process servers on 127.0.0.1 whose certificates a
test CA signs but which must not be trusted (review of issue 18, items 1
and 7): the name asked never reaches a server whose identity fails, and a
server that drops the connection after the handshake is reported as such.
"""

from __future__ import annotations

import datetime
import os
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import protocol, reactor, ssl
from twisted.names import dns
from twisted.protocols import basic
from twisted.trial.unittest import TestCase

from netecho.cli.tls import ClientTLS
from netecho.dns import api
from netecho.errors import UserError
from tests import certs
from tests.test_lookup import a_records, reply_to


def _server_certificate(ca_name, ca_key, alt_names):
    """A leaf certificate for CN=127.0.0.1 signed by the CA, with exactly C{alt_names} as its SAN (none if empty)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


class _Recorder(protocol.Protocol):
    """Keeps every byte a client sends after the handshake; C{factory.behave(self, data)} answers."""

    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)
        self.factory.behave(self, data)


class _Answering(basic.Int16StringReceiver):
    def stringReceived(self, data: bytes) -> None:
        self.factory.received.append(data)
        query = dns.Message()
        query.fromStr(data)
        self.sendString(reply_to(query, a_records(query, "192.0.2.53")))


class DoTIdentityTests(TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.remove(os.path.join(self.dir, f)) for f in os.listdir(self.dir)]
                        and os.rmdir(self.dir))
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = certs._certificate("netecho DoT test CA", self.ca_key, ca=True)
        self.ca = certs._write(self.dir, "ca", self.ca_key, ca_cert)
        self.ca_name = ca_cert.subject

    def serve(self, name: str, alt_names, proto=_Recorder, behave=lambda p, data: None):
        """A TLS server on 127.0.0.1 with a certificate the CA signed; (its factory, port)."""
        key, cert = _server_certificate(self.ca_name, self.ca_key, alt_names)
        files = certs._write(self.dir, name, key, cert)
        with open(files.both, "rb") as f:
            options = ssl.PrivateCertificate.loadPEM(f.read()).options()
        factory = protocol.Factory.forProtocol(proto)
        factory.received = []
        factory.behave = behave
        port = reactor.listenSSL(0, factory, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    async def ask(self, port: int, name: str = "secret-name.example"):
        return await api.query(reactor, name, "A", [("127.0.0.1", port)], timeout=5, retries=0,
                               tls=lambda host: ClientTLS(host, ca=self.ca.cert))

    async def assert_refused_before_the_query(self, alt_names):
        factory, port = self.serve("leaf", alt_names)
        with self.assertRaises(UserError) as caught:
            await self.ask(port)
        self.assertRegex(str(caught.exception),
                         rf"^lookup secret-name.example on 127.0.0.1:{port}: tls: certificate verify failed: ")
        # Nothing after the handshake: the name never left.
        self.assertEqual(factory.received, [])
        self.assertNotIn(b"secret-name", b"".join(factory.received))
        # Twisted logs what it tolerated (no subjectAltName); the command hides that line.
        self.flushLoggedErrors()

    async def test_certificate_without_subject_alt_name_gets_no_query(self):
        await self.assert_refused_before_the_query([])

    async def test_ip_written_as_a_dns_name_gets_no_query(self):
        await self.assert_refused_before_the_query([x509.DNSName("127.0.0.1")])

    async def test_valid_certificate_answered(self):
        import ipaddress

        factory, port = self.serve("good", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], _Answering)
        result = await self.ask(port, "www.example")
        self.assertEqual(result.lines(), ["192.0.2.53"])
        self.assertEqual(result.exchanges[0].transport, "TLS")
        self.assertEqual(len(factory.received), 1)

    async def test_close_after_the_handshake_is_not_a_handshake_failure(self):
        import ipaddress

        def half_then_drop(proto, data):
            proto.transport.write(b"\x00\x40\x12")  # a length prefix and a byte of the answer
            proto.transport.abortConnection()  # no close_notify: an unclean close

        factory, port = self.serve("dropper", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                                   behave=half_then_drop)
        with self.assertRaises(UserError) as caught:
            await self.ask(port, "www.example")
        self.assertEqual(str(caught.exception),
                         f"lookup www.example on 127.0.0.1:{port}: connection closed by the server")
        self.assertEqual(len(factory.received), 1)

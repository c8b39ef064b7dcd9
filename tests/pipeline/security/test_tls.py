"""TLS on the DICOM port (PS3.15 B.1) against dcmtk's ``echoscu +tls`` and ``storescu +tls``.

A throwaway PKI is made once per session: a CA, a server certificate, a
client certificate, and a client certificate from another ("rogue") CA. The
server runs in this process with the settings of the ``settings`` fixture plus
the TLS paths.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from pipeline.config import Settings
from pipeline.index.schema import audit_events
from pipeline.ingest.scp import DicomIngestServer
from pipeline.runtime import Runtime
from pipeline.security.tls import TLSConfigError, server_context
from tests.conftest import require_tool

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
SAMPLE = Path("transfer_syntaxes") / "explicit_vr_le" / "dcm_qa_ts_1.dcm"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate our CA did not sign
    rogue_key: Path


def _make_pki(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(path: Path, k: rsa.RSAPrivateKey) -> Path:
        path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    def write_cert(path: Path, cert: x509.Certificate) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def ca(cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        k = key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False)
            .sign(k, hashes.SHA256())
        )
        return cert, k

    def leaf(
        cn: str, issuer: tuple[x509.Certificate, rsa.RSAPrivateKey], server: bool
    ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        k = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer[0].subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(issuer[1], hashes.SHA256()), k

    root = ca("Lightbox Test CA")
    rogue_root = ca("Rogue CA")
    srv = leaf("localhost", root, server=True)
    cli = leaf("STORESCU", root, server=False)
    rogue = leaf("ROGUE", rogue_root, server=False)
    return Pki(
        ca=write_cert(folder / "ca.crt", root[0]),
        server_cert=write_cert(folder / "server.crt", srv[0]),
        server_key=write_key(folder / "server.key", srv[1]),
        client_cert=write_cert(folder / "client.crt", cli[0]),
        client_key=write_key(folder / "client.key", cli[1]),
        rogue_cert=write_cert(folder / "rogue.crt", rogue[0]),
        rogue_key=write_key(folder / "rogue.key", rogue[1]),
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make_pki(tmp_path_factory.mktemp("pki"))


# -- server_context ----------------------------------------------------------


def test_server_context_without_ca(pki: Pki) -> None:
    ctx = server_context(pki.server_cert, pki.server_key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.protocol == ssl.PROTOCOL_TLS_SERVER


def test_server_context_with_ca_requires_client_certificates(pki: Pki) -> None:
    ctx = server_context(pki.server_cert, pki.server_key, pki.ca)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "Lightbox Test CA"),),)]


def test_server_context_errors_name_the_setting(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "absent.pem"
    with pytest.raises(TLSConfigError, match="dicom_tls_cert: .*absent.pem"):
        server_context(missing, pki.server_key)
    with pytest.raises(TLSConfigError, match="dicom_tls_key"):
        server_context(pki.server_cert, missing)
    with pytest.raises(TLSConfigError, match="dicom_tls_ca"):
        server_context(pki.server_cert, pki.server_key, missing)
    with pytest.raises(TLSConfigError, match="http_tls_cert"):
        server_context(missing, pki.server_key, setting="http_tls")
    with pytest.raises(TLSConfigError, match="dicom_tls_cert/dicom_tls_key"):
        server_context(pki.server_cert, pki.client_key)  # not this certificate's key
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match="dicom_tls_ca"):
        server_context(pki.server_cert, pki.server_key, garbage)
    unreadable = tmp_path / "unreadable.key"
    unreadable.write_bytes(pki.server_key.read_bytes())
    unreadable.chmod(0)
    if not os.access(unreadable, os.R_OK):  # root reads anything
        with pytest.raises(TLSConfigError, match="dicom_tls_key: .* not readable"):
            server_context(pki.server_cert, unreadable)


def test_server_refuses_to_start_with_a_missing_certificate(
    runtime: Runtime, settings: Settings, pki: Pki, tmp_path: Path
) -> None:
    bad = settings.model_copy(update={"dicom_tls_cert": tmp_path / "nope.crt", "dicom_tls_key": pki.server_key})
    with pytest.raises(TLSConfigError, match="dicom_tls_cert"):
        DicomIngestServer(bad, runtime.ingest, runtime.audit)


# -- the DICOM port over TLS, with dcmtk -------------------------------------


def tls_settings(settings: Settings, pki: Pki, *, mutual: bool = False) -> Settings:
    return settings.model_copy(
        update={
            "dicom_tls_cert": pki.server_cert,
            "dicom_tls_key": pki.server_key,
            "dicom_tls_ca": pki.ca if mutual else None,
        }
    )


@pytest.fixture
def start_server(runtime: Runtime) -> Iterator[Callable[[Settings], DicomIngestServer]]:
    started: list[DicomIngestServer] = []

    def start(s: Settings) -> DicomIngestServer:
        srv = DicomIngestServer(s, runtime.ingest, runtime.audit).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def tls_option(pki: Pki, client: str) -> list[str]:
    """dcmtk's TLS options: our client certificate, another CA's, none, or plain TCP."""
    if client == "plain":
        return []
    if client == "anonymous":
        return ["+tla", "+cf", str(pki.ca)]
    key, cert = (pki.client_key, pki.client_cert) if client == "ours" else (pki.rogue_key, pki.rogue_cert)
    # +cf: verify the server against our CA (dcmtk's default requires it).
    return ["+tls", str(key), str(cert), "+cf", str(pki.ca)]


def echoscu(settings: Settings, pki: Pki, client: str = "ours") -> subprocess.CompletedProcess[str]:
    cmd = [require_tool("echoscu"), *tls_option(pki, client), "-aet", "ECHOSCU", "-aec", settings.ae_title]
    return subprocess.run(
        [*cmd, "127.0.0.1", str(settings.dicom_port)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def storescu(settings: Settings, pki: Pki, path: Path, client: str = "ours") -> subprocess.CompletedProcess[str]:
    cmd = [require_tool("storescu"), *tls_option(pki, client), "-aet", "STORESCU", "-aec", settings.ae_title]
    return subprocess.run(
        [*cmd, "127.0.0.1", str(settings.dicom_port), str(path)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def audit_rows(runtime: Runtime, **where: str) -> list[dict[str, object]]:
    runtime.audit.flush()
    query = select(audit_events)
    for column, value in where.items():
        query = query.where(audit_events.c[column] == value)
    with runtime.index.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def wait_for(condition: Callable[[], object], timeout: float = 15.0) -> object:
    """The server audits when the association has ended, just after the peer's last PDU."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_echoscu_and_storescu_over_tls(
    start_server: Callable[[Settings], DicomIngestServer],
    runtime: Runtime,
    settings: Settings,
    pki: Pki,
    dicom_data: Path,
) -> None:
    s = tls_settings(settings, pki)
    srv = start_server(s)
    assert srv.server.ssl_context is not None
    echo = echoscu(s, pki)
    assert echo.returncode == 0, echo.stderr
    path = dicom_data / SAMPLE
    store = storescu(s, pki, path)
    assert store.returncode == 0, store.stderr
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    row = runtime.index.get_instance(ds.SOPInstanceUID)
    assert row is not None and row.source == "dimse"
    assert srv.scp.stored == 1
    rows = wait_for(lambda: audit_rows(runtime, event_id="110104", actor="STORESCU"))
    assert rows, "no DICOM Instances Transferred event"
    assert rows[0]["study_instance_uid"] == ds.StudyInstanceUID
    assert json.loads(str(rows[0]["detail"])) == {"instances": 1, "failed": 0}


def test_plain_association_refused_on_tls_port(
    start_server: Callable[[Settings], DicomIngestServer],
    runtime: Runtime,
    settings: Settings,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain A-ASSOCIATE-RQ is no ClientHello: dropped, and the server keeps serving TLS."""
    s = tls_settings(settings, pki)
    srv = start_server(s)
    plain = echoscu(s, pki, client="plain")
    assert plain.returncode != 0
    # pynetdicom as a plain requestor: no association either.
    ae = AE(ae_title="PLAINSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", s.dicom_port, ae_title=s.ae_title)
    assert not assoc.is_established
    # A peer that connects and says nothing must not hold up the others: the
    # handshake runs in the connection's own thread, not in accept().
    with socket.create_connection(("127.0.0.1", s.dicom_port)):
        echo = echoscu(s, pki)
        assert echo.returncode == 0, echo.stderr
    assert srv._thread is not None and srv._thread.is_alive()
    assert "TLS handshake refused peer=127.0.0.1" in caplog.text
    rows = wait_for(lambda: audit_rows(runtime, event_id="110113", event_type_code="110126"))
    assert rows
    assert rows[0]["source_address"] == "127.0.0.1"
    assert "TLS handshake failed" in str(rows[0]["detail"])
    assert rows[0]["outcome"] == 8


def test_mutual_tls_needs_a_client_certificate_from_our_ca(
    start_server: Callable[[Settings], DicomIngestServer],
    settings: Settings,
    pki: Pki,
) -> None:
    s = tls_settings(settings, pki, mutual=True)
    start_server(s)
    assert echoscu(s, pki, client="anonymous").returncode != 0  # no certificate
    assert echoscu(s, pki, client="rogue").returncode != 0  # signed by another CA
    assert echoscu(s, pki, client="plain").returncode != 0
    ours = echoscu(s, pki, client="ours")
    assert ours.returncode == 0, ours.stderr


def test_pynetdicom_requestor_over_tls(
    start_server: Callable[[Settings], DicomIngestServer], settings: Settings, pki: Pki
) -> None:
    """pynetdicom's own TLS requestor (``tls_args``) with a client certificate."""
    s = tls_settings(settings, pki, mutual=True)
    start_server(s)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", s.dicom_port, ae_title=s.ae_title, tls_args=(ctx, "localhost"))
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()

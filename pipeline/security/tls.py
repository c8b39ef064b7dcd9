"""TLS server contexts for the DICOM port (PS3.15 B.1) and, later, HTTPS.

DICOM PS3.15 Annex B.1, "The Basic TLS Secure Transport Connection Profile",
and its successors (B.9 BCP 195, B.10 non-downgrading BCP 195) ask for TLS 1.2
or later with X.509 certificates; the port then speaks TLS only (a plain
A-ASSOCIATE-RQ on it is no TLS handshake and is dropped). With a CA bundle the
peer must present a certificate that CA signed (mutual authentication, the
"node authentication" of IHE ATNA).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path


class TLSConfigError(ValueError):
    """A certificate, key or CA file named in the settings is missing or unusable.

    The message names the setting (``dicom_tls_cert`` ...) and the path, never
    the file's contents.
    """


def _readable(path: Path | str, setting: str) -> str:
    """The path as a string when it names a readable regular file, else a clear error."""
    p = Path(path)
    if not p.is_file():
        raise TLSConfigError(f"{setting}: {p} is not a file (missing or a directory)")
    if not os.access(p, os.R_OK):
        raise TLSConfigError(f"{setting}: {p} is not readable by this process")
    return str(p)


def server_context(
    cert: Path | str,
    key: Path | str,
    ca: Path | str | None = None,
    *,
    setting: str = "dicom_tls",
) -> ssl.SSLContext:
    """An :class:`ssl.SSLContext` for the server side of TLS connections.

    Parameters
    ----------
    cert
        PEM certificate (followed by its chain, if any) presented to peers.
    key
        PEM private key of ``cert`` (unencrypted: the server starts unattended).
    ca
        PEM CA bundle. When given, peers must present a certificate signed by
        one of these CAs (``CERT_REQUIRED``); when None, no client certificate
        is asked for.
    setting
        Prefix of the settings the paths came from (``dicom_tls``,
        ``http_tls``), so that an error names ``<setting>_cert`` etc.

    Returns
    -------
    ssl.SSLContext
        ``PROTOCOL_TLS_SERVER`` with TLS 1.2 as the minimum: PS3.15 B.1 was
        written for TLS 1.0 but B.9/B.10 (BCP 195) forbid anything older
        than 1.2, which is what dcmtk's default profile offers.

    Raises
    ------
    TLSConfigError
        When a file is missing, unreadable, not PEM, or the key does not
        belong to the certificate.
    """
    cert_path = _readable(cert, f"{setting}_cert")
    key_path = _readable(key, f"{setting}_key")
    ca_path = _readable(ca, f"{setting}_ca") if ca is not None else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # TLS compression leaks plaintext lengths (CRIME); BCP 195 forbids it.
    context.options |= ssl.OP_NO_COMPRESSION
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        # OpenSSL's reason ("KEY_VALUES_MISMATCH", "NO_START_LINE") says what
        # is wrong without quoting the file.
        raise TLSConfigError(
            f"{setting}_cert/{setting}_key: cannot load {cert_path} with {key_path}: "
            f"{exc.reason or exc}"
        ) from None
    if ca_path is not None:
        try:
            context.load_verify_locations(cafile=ca_path)
        except ssl.SSLError as exc:
            raise TLSConfigError(
                f"{setting}_ca: cannot load {ca_path}: {exc.reason or exc}"
            ) from None
        if not context.get_ca_certs():
            raise TLSConfigError(f"{setting}_ca: {ca_path} holds no CA certificate")
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


"""Who may associate, and how many at once: the calling-AE allow-list and per-peer slots.

Both are checked when an A-ASSOCIATE-RQ arrives (PS3.8 9.3.4), before any
presentation context is negotiated; a refusal is an A-ASSOCIATE-RJ with the
Result, Source and Reason/Diag. of PS3.8 Table 9-21:

* a calling AE not on the list (or not from its listed address): rejected-permanent,
  DICOM UL service-user, "calling-AE-title-not-recognized" (1, 1, 3);
* a peer over its association limit: rejected-transient, DICOM UL service-provider
  (presentation related function), "local-limit-exceeded" (2, 3, 2).

The allow-list comes from ``allowed_calling_aes``: ``"*"`` (anyone), ``"AE"``
(that AE title from any address) or ``"AE@host"`` where host is an IP address,
a CIDR network (``CT1@10.0.0.0/24``), a host name (resolved once, when the
server starts) or ``*``. Entries split on their *last* ``@``: an AE title may
itself contain ``@`` (PS3.5 Table 6.2-1), a host never does.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import ipaddress
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AllowListError(ValueError):
    """An ``allowed_calling_aes`` entry that cannot be parsed; the message quotes it."""


def normalise_ip(address: str) -> str:
    """The canonical text of a peer's IP address.

    An IPv4 peer reaching a dual-stack socket appears as ``::ffff:a.b.c.d``;
    it is the same peer as ``a.b.c.d`` for the allow-list and the slot count.
    A zone (``fe80::1%eth0``) is dropped. Anything unparsable is returned as is
    (it can only fail to match).
    """
    text = address.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _valid_ae_title(title: str) -> bool:
    # PS3.5 Table 6.2-1 (AE): 1 to 16 characters of the default repertoire,
    # no backslash, no control characters, not only spaces.
    return (
        0 < len(title) <= 16
        and title.strip() != ""
        and all(" " <= ch <= "~" and ch != "\\" for ch in title)
    )


@dataclass(frozen=True)
class AllowEntry:
    """One parsed ``allowed_calling_aes`` entry.

    ``ae`` is None for any AE title; ``networks`` is None for any address,
    else the networks (single addresses are /32 or /128) the peer must be in.
    """

    text: str
    ae: str | None
    networks: tuple[IPNetwork, ...] | None

    def permits(self, calling_ae: str, ip: IPAddress | None) -> bool:
        if self.ae is not None and self.ae != calling_ae:
            return False
        if self.networks is None:
            return True
        return ip is not None and any(
            ip.version == net.version and ip in net for net in self.networks
        )


def _parse_host(entry: str, host: str) -> tuple[IPNetwork, ...] | None:
    if host == "*":
        return None
    try:
        return (ipaddress.ip_network(host, strict=False),)
    except ValueError:
        pass
    if "/" in host:
        raise AllowListError(
            f"allowed_calling_aes: {entry!r}: {host!r} is not a valid CIDR network"
        )
    # A host name (RFC 1123 labels): resolved now, once. A name that does not
    # resolve matches no peer (fail closed) but does not stop the server: the
    # other devices keep working while DNS is fixed.
    labels = host.rstrip(".").split(".")
    if not all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        for label in labels
    ):
        raise AllowListError(
            f"allowed_calling_aes: {entry!r}: {host!r} is no IP address, network or host name"
        )
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        log.warning(
            "allowed_calling_aes: host %s of entry %s does not resolve (%s): "
            "the entry matches no peer",
            host,
            entry,
            exc.strerror or type(exc).__name__,
        )
        return ()
    nets = {ipaddress.ip_network(normalise_ip(str(info[4][0]))) for info in infos}
    return tuple(sorted(nets, key=lambda n: (n.version, n)))


def parse_allow_entry(text: str) -> AllowEntry | None:
    """Parse one entry; None for an empty one (ignored). Raises :class:`AllowListError`."""
    entry = text.strip()
    if not entry:
        return None
    if entry == "*":
        return AllowEntry(entry, None, None)
    ae_part, sep, host = entry.rpartition("@")
    if not sep:
        ae_part, host = entry, "*"
    ae_part = ae_part.strip()
    host = host.strip()
    if not host:
        raise AllowListError(f"allowed_calling_aes: {entry!r}: nothing after '@' (write AE@host)")
    if ae_part == "*":
        ae: str | None = None
    elif _valid_ae_title(ae_part):
        ae = ae_part
    else:
        raise AllowListError(
            f"allowed_calling_aes: {entry!r}: {ae_part!r} is no AE title "
            "(1-16 printable characters, no backslash)"
        )
    return AllowEntry(entry, ae, _parse_host(entry, host))


class AllowList:
    """The parsed calling-AE allow-list; see module docstring.

    Parameters
    ----------
    entries
        ``allowed_calling_aes``. Empty, or containing ``"*"``, allows any peer.

    Raises
    ------
    AllowListError
        On the first malformed entry (at start, not per association).
    """

    def __init__(self, entries: list[str] | tuple[str, ...]) -> None:
        parsed = [e for e in (parse_allow_entry(t) for t in entries) if e is not None]
        self.entries: tuple[AllowEntry, ...] = tuple(parsed)
        self.allows_any = not parsed or any(e.ae is None and e.networks is None for e in parsed)

    def permits(self, calling_ae: str, address: str) -> bool:
        """Whether ``calling_ae`` may associate from IP ``address``.

        AE titles compare exactly (they are case-sensitive) after removing the
        padding spaces that are not significant (PS3.5 Table 6.2-1).
        """
        if self.allows_any:
            return True
        title = calling_ae.strip()
        try:
            ip: IPAddress | None = ipaddress.ip_address(normalise_ip(address))
        except ValueError:
            ip = None
        return any(e.permits(title, ip) for e in self.entries)


class PeerSlot:
    """One admitted association: an exclusive ``flock`` on a slot file, held until released."""

    def __init__(self, fd: int, index: int) -> None:
        self._fd: int | None = fd
        self.index = index
        self._lock = threading.Lock()

    def release(self) -> None:
        """Give the slot back (idempotent). Closing the file releases the lock."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


class PeerSlots:
    """At most ``limit`` concurrent associations per peer IP, across every process of the host.

    The ingest actors are separate processes behind one ``SO_REUSEPORT``
    port, so a per-process counter would allow ``limit`` times the number of
    actors. Instead each admitted association holds a non-blocking exclusive
    ``flock`` on one of ``limit`` files
    ``<root>/<sha256(ip)[:32]>/<n>.lock``: the kernel counts for all processes,
    and a process that dies (a crashed or killed actor) releases its locks with
    its file descriptors, so no slot leaks. ``flock`` locks belong to the open
    file description, so two threads of one process also exclude each other.

    The peer address is hashed to name its folder: nothing received from the
    network ever becomes part of a path. ``root`` must be on a local file
    system (``flock`` over NFS is emulated or absent).

    Parameters
    ----------
    root
        Folder of the slot files, normally ``<data_dir>/run/peers``.
    limit
        ``max_associations_per_peer``.
    """

    def __init__(self, root: Path, limit: int) -> None:
        if limit < 1:
            raise ValueError("the per-peer association limit must be at least 1")
        self.root = Path(root)
        self.limit = limit
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def folder(self, address: str) -> Path:
        digest = hashlib.sha256(normalise_ip(address).encode("utf-8", "replace")).hexdigest()
        return self.root / digest[:32]

    def acquire(self, address: str) -> PeerSlot | None:
        """A free slot for the peer at ``address``, or None when all ``limit`` are held."""
        folder = self.folder(address)
        folder.mkdir(exist_ok=True, mode=0o700)
        for n in range(self.limit):
            # O_CLOEXEC (Python's default, PEP 446): a child we spawn must not
            # inherit, and so keep, the lock.
            fd = os.open(folder / f"{n}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    continue  # held by another association
                raise
            return PeerSlot(fd, n)
        return None

    def held(self, address: str) -> int:
        """How many of the peer's slots are held now (for tests and status).

        It probes each slot by taking its lock for an instant: an ``acquire``
        at that very moment may find the slot busy. Not for admission.
        """
        count = 0
        folder = self.folder(address)
        for n in range(self.limit):
            path = folder / f"{n}.lock"
            if not path.exists():
                continue
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                count += 1
            finally:
                os.close(fd)
        return count

"""Security: accounts and roles, credentials, the audit trail, transport security.

Each concept is a module of its own: :mod:`.roles` (the permission table),
:mod:`.passwords` (argon2id), :mod:`.accounts` (users, sessions, bearer tokens,
API keys), :mod:`.audit` (the append-only trail and IHE ATNA export),
:mod:`.tls` (certificates for DICOM and HTTP).
"""

"""TLS material: loading and checking certificates at start, and a development CA for --dev-tls.

A missing file, an unreadable key or a certificate that does not match its key must stop the
process at start with a clear message, not fail the first handshake in production.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from pingpull.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path

    def server_context(self, alpn: list[str]) -> ssl.SSLContext:
        for label, path in (("certificate", self.cert), ("key", self.key)):
            if not path.is_file():
                raise ConfigError(f"TLS {label} file {path} does not exist")
            try:
                path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"TLS {label} file {path} is not readable: {exc.strerror}") from exc
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(certfile=str(self.cert), keyfile=str(self.key))
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
                raise ConfigError(f"TLS certificate {self.cert} does not match the key {self.key}") from exc
            raise ConfigError(f"cannot load TLS certificate/key ({self.cert}, {self.key}): {exc}") from exc
        context.set_alpn_protocols(alpn)
        return context


def dev_tls(directory: Path, hosts: list[str]) -> tuple[TlsFiles, Path]:
    """A local CA and a certificate for `hosts`, made once and reused; returns (files, CA cert path)."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    if not (ca_path.exists() and cert_path.exists() and key_path.exists()):
        ca = trustme.CA(organization_name="pingpull development CA")
        issued = ca.issue_cert(*hosts)
        ca.cert_pem.write_to_path(str(ca_path))
        issued.private_key_pem.write_to_path(str(key_path))
        key_path.chmod(0o600)
        with open(cert_path, "wb") as fh:
            for blob in issued.cert_chain_pems:
                fh.write(blob.bytes())
    return TlsFiles(cert_path, key_path), ca_path

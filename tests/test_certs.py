"""The generated CA, serving certificate and kubeconfig."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509

from streamsrv.certs import CertificateAuthority, read_kubeconfig, write_kubeconfig


def sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in ext}


def test_ca_is_kept_and_cert_reissued_only_when_names_change(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    cert, key = ca.serving_cert(["localhost", "127.0.0.1"])
    first = cert.read_bytes()
    assert sans(cert) == {"localhost", "127.0.0.1"}
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct(ca.key_path.stat().st_mode & 0o777) == "0o600"

    again = CertificateAuthority(tmp_path)
    assert again.pem == ca.pem
    assert again.serving_cert(["localhost"])[0].read_bytes() == first  # subset: kept
    again.serving_cert(["localhost", "10.1.2.3"])
    assert "10.1.2.3" in sans(cert)

    # The CA verifies the serving certificate, as kubectl will.
    ctx = ssl.create_default_context(cadata=again.pem.decode())
    assert ctx.cert_store_stats()["x509_ca"] == 1


def test_kubeconfig_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "kubeconfig"
    write_kubeconfig(path, "https://127.0.0.1:1234", "tok", b"PEM")
    assert read_kubeconfig(path) == ("https://127.0.0.1:1234", "tok", b"PEM", "default")
    assert oct(path.stat().st_mode & 0o777) == "0o600"

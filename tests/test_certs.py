"""The generated CA, serving certificate and kubeconfig."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509

from streamsrv.certs import CertificateAuthority, write_kubeconfig
from streamsrv.client.config import load_kubeconfig


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
    config = load_kubeconfig(path)
    assert (config.server, config.token, config.ca_data, config.namespace) == (
        "https://127.0.0.1:1234", "tok", b"PEM", "default",
    )  # fmt: skip
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_state_files_are_private_and_written_atomically(tmp_path: Path) -> None:
    from streamsrv.certs import CertificateAuthority, private_dir

    state = tmp_path / "state"
    state.mkdir(mode=0o755)  # as old main left it
    private_dir(state)
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    ca = CertificateAuthority(state)
    cert, key = ca.serving_cert(["localhost"])
    write_kubeconfig(state / "kubeconfig", "https://127.0.0.1:1", "t", ca.pem)
    for path in (ca.key_path, ca.cert_path, cert, key, state / "kubeconfig"):
        assert oct(path.stat().st_mode & 0o777) == "0o600", path
    assert not list(state.glob(".*.tmp"))  # no temporary file is left behind


def test_a_planted_symlink_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "kubeconfig"
    path.symlink_to(victim)
    write_kubeconfig(path, "https://127.0.0.1:1", "t", None)
    assert victim.read_text() == "precious"
    assert not path.is_symlink() and oct(path.stat().st_mode & 0o777) == "0o600"


def test_the_token_is_kept_across_restarts_unless_rotated(tmp_path: Path) -> None:
    from streamsrv.certs import load_token

    path = tmp_path / "token"
    first = load_token(path)
    assert len(first) >= 32 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_token(path) == first
    rotated = load_token(path, rotate=True)
    assert rotated != first and load_token(path) == rotated
    path.write_text("short\n")  # damaged: a new one, never a guessable token
    assert load_token(path) not in ("short", rotated)

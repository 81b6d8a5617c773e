"""`splitserve certs`: a CA and router/node certificates that verify against it, in the file
names the Helm chart mounts and `--tls-dir` reads."""

import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from splitserve.cli import main
from splitserve.tls import TLSFiles


def test_certs_command_writes_what_tls_dir_reads(tmp_path):
    assert main(["certs", "--out", str(tmp_path), "--hosts", "localhost,10.0.0.7,node.example", "--days", "2"]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    for role in ("router", "node"):
        files = TLSFiles.load(tmp_path, role)
        cert = x509.load_pem_x509_certificate(files.cert)
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "node.example"}
        assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
        assert stat.S_IMODE(files.key_path.stat().st_mode) == 0o600
        files.server_credentials(require_client_cert=True)
        files.client_credentials()


def test_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(ValueError, match="router.pem"):
        TLSFiles.load(tmp_path, "router")
    with pytest.raises(ValueError, match="role"):
        TLSFiles.load(tmp_path, "client")

"""Temporal client settings for TLS, mTLS and API keys (Temporal Cloud): Pulse's settings and Temporal's
own client configuration both reach the connection."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.service import TLSConfig

from nftpulse.core.settings import Settings
from nftpulse.temporal import ConnectOptions, connect, connect_options


def test_plain_by_default() -> None:
    assert connect_options(Settings(), environ={}) == ConnectOptions()


def test_mtls_files_and_server_name(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_bytes(f"-----{name}-----".encode())
    settings = Settings(
        temporal_tls_ca_cert=tmp_path / "ca.pem",
        temporal_tls_client_cert=tmp_path / "client.pem",
        temporal_tls_client_key=tmp_path / "client.key",
        temporal_tls_server_name="pulse.tmprl.cloud",
    )
    options = connect_options(settings, environ={})
    assert options.tls == TLSConfig(
        server_root_ca_cert=b"-----ca.pem-----",
        client_cert=b"-----client.pem-----",
        client_private_key=b"-----client.key-----",
        domain="pulse.tmprl.cloud",
    )


def test_api_key_from_pulse_or_temporal_settings_implies_tls() -> None:
    ours = connect_options(Settings(temporal_api_key="pulse-key"), environ={})
    assert (ours.api_key, ours.tls) == ("pulse-key", True)
    assert "pulse-key" not in repr(Settings(temporal_api_key="pulse-key"))  # a SecretStr
    theirs = connect_options(Settings(), environ={"TEMPORAL_API_KEY": "env-key"})
    assert (theirs.api_key, theirs.tls) == ("env-key", True)
    both = connect_options(Settings(temporal_api_key="pulse-key"), environ={"TEMPORAL_API_KEY": "env-key"})
    assert both.api_key == "pulse-key"
    assert connect_options(Settings(temporal_tls=True), environ={}).tls is True


async def test_the_options_reach_the_connection(temporal_client: Client) -> None:
    target = temporal_client.service_client.config.target_host
    assert await connect(target, "default", attempts=1, options=ConnectOptions())
    # The dev server speaks plain gRPC: a client that insists on TLS cannot talk to it.
    with pytest.raises(RuntimeError, match="cannot reach Temporal"):
        await connect(target, "default", attempts=1, options=ConnectOptions(tls=True))

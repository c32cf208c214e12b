"""Contract checks: the channels' requests against the providers' official OpenAPI files, through Prism
(a validating mock) started by ``scripts/prism.sh``. Prism answers 422/400 when a request breaks the
description, so a passing send means our request conforms."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from python_http_client.exceptions import BadRequestsError
from sendgrid import SendGridAPIClient

from nftpulse.channels.base import OutboundMessage
from nftpulse.channels.email import SendGridConfig, SendGridEmailChannel
from nftpulse.channels.sms import TwilioConfig, TwilioSmsChannel
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PRISM = ROOT / "scripts" / "prism.sh"
SID = "AC" + "a" * 32
STARTUP_TIMEOUT_S = 90.0


def _wait(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"Prism exited with {proc.returncode}: {log.read_text()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"Prism did not listen on {port} within {STARTUP_TIMEOUT_S}s: {log.read_text()[-500:]}")


@pytest.fixture(scope="module")
def prism(specs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two Prism mocks, Twilio and SendGrid, started in parallel; yields their base URLs."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("npm/node not available: cannot install Prism for the contract checks")
    logs = tmp_path_factory.mktemp("prism")
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    waits = []
    for name, spec in (("twilio", "twilio_api_v2010.json"), ("sendgrid", "tsg_mail_v3.json")):
        if not (specs_dir / spec).is_file():
            pytest.skip(f"{spec} missing from {specs_dir}")
        port = free_port()
        log = logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", str(PRISM), str(port), str(specs_dir / spec)], stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        waits.append((port, proc, log))
        urls[name] = f"http://127.0.0.1:{port}"
    try:
        for port, proc, log in waits:
            _wait(port, proc, log)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _sms() -> OutboundMessage:
    return OutboundMessage(
        idempotency_key="ntf_c1",
        user_id="u1",
        kind="trust_change",
        severity="warning",
        to="+4915112345678",
        text="Pulse Alert: trust score of Apes fell 62->45 (rule <50).",
    )


async def test_twilio_messages_create_conforms(prism: dict[str, str]) -> None:
    channel = TwilioSmsChannel(
        TwilioConfig(
            account_sid=SID,
            auth_token="token",
            from_number="+15005550006",
            base_url=prism["twilio"],
            status_callback_url="https://pulse.example/v1/callbacks/twilio",
            timeout_s=10,
        )
    )
    receipt = await channel.send(_sms())
    assert receipt.provider_message_id  # the spec's example sid
    assert receipt.status in {"queued", "sent", "delivered", "read"}


def test_twilio_mock_rejects_a_request_without_to(prism: dict[str, str]) -> None:
    # Guards the guard: the mock really validates (the README: "a request missing To gets 422").
    resp = httpx.post(
        f"{prism['twilio']}/2010-04-01/Accounts/{SID}/Messages.json",
        data={"From": "+15005550006", "Body": "x"},
        auth=(SID, "token"),
    )
    assert resp.status_code == 422


async def test_sendgrid_mail_send_conforms(prism: dict[str, str]) -> None:
    channel = SendGridEmailChannel(
        SendGridConfig(
            api_key="SG.x", from_email="alerts@pulse.example", host=prism["sendgrid"], timeout_s=10
        )
    )
    message = OutboundMessage(
        idempotency_key="ntf_c2",
        user_id="u1",
        kind="trust_change",
        severity="warning",
        to="ada@example.com",
        subject="Trust score fell",
        text="text",
        html="<p>html</p>",
    )
    receipt = await channel.send(message)
    assert receipt.detail["http_status"] == 202


def test_sendgrid_mock_rejects_an_invalid_body(prism: dict[str, str]) -> None:
    client = SendGridAPIClient("SG.x", host=prism["sendgrid"])
    with pytest.raises(BadRequestsError):
        client.send({"from": {"email": "alerts@pulse.example"}, "subject": "no personalizations"})

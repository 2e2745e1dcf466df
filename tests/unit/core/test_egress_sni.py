"""The ClientHello's server name, from real OpenSSL hellos and from malformed ones."""

from __future__ import annotations

import asyncio
import ssl
import struct

import pytest

from orchestrator.egress.sni import ClientHelloError, parse_client_hello, read_client_hello


def openssl_hello(server_name: str | None) -> bytes:
    """The first flight Python's ssl module (OpenSSL) sends for ``server_name``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def read(data: bytes) -> tuple[bytes, str | None]:
    async def run() -> tuple[bytes, str | None]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_client_hello(reader)

    return asyncio.run(run())


def records(message: bytes, size: int) -> bytes:
    """``message`` split into handshake records of ``size`` bytes."""
    out = b""
    for start in range(0, len(message), size):
        fragment = message[start : start + size]
        out += struct.pack("!BBBH", 22, 3, 1, len(fragment)) + fragment
    return out


def test_a_real_hello_gives_its_server_name_and_every_byte_read() -> None:
    hello = openssl_hello("api.example.com")
    raw, name = read(hello)
    assert name == "api.example.com"
    assert raw == hello


def test_a_hello_without_a_server_name_gives_none() -> None:
    assert read(openssl_hello(None))[1] is None


def test_a_hello_split_over_records_is_reassembled() -> None:
    message = openssl_hello("split.example")[5:]
    data = records(message, 100)
    raw, name = read(data)
    assert name == "split.example"
    assert raw == data


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not TLS
        b"\x16\x03\x01\x00",  # cut inside the record header
        b"\x16\x03\x01\x00\x00",  # an empty record
        b"\x16\x03\x01\x40\x01" + b"\x00" * 10,  # a record over 2^14 bytes
        b"\x16\x02\x00\x00\x04\x01\x00\x00\x00",  # SSL 2 version byte
        records(b"\x02\x00\x00\x00", 4),  # a ServerHello
        records(b"\x01\xff\xff\xff", 4),  # a hello claiming 16 MiB
        records(b"\x01\x00\x00\x02\x03\x03", 6),  # truncated body
    ],
)
def test_malformed_hellos_are_refusals_not_tracebacks(data: bytes) -> None:
    with pytest.raises(ClientHelloError):
        read(data)


def test_every_truncation_of_a_real_hello_is_refused() -> None:
    message = openssl_hello("cut.example")[5:]
    for end in range(4, len(message), 7):
        body_length = end - 4
        cut = message[:1] + body_length.to_bytes(3, "big") + message[4:end]
        with pytest.raises(ClientHelloError):
            parse_client_hello(cut)


def test_a_doubled_extension_and_two_host_names_are_refused() -> None:
    def hello(extensions: bytes) -> bytes:
        body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
        body += len(extensions).to_bytes(2, "big") + extensions
        return b"\x01" + len(body).to_bytes(3, "big") + body

    def sni(*names: bytes) -> bytes:
        entries = b"".join(b"\x00" + len(n).to_bytes(2, "big") + n for n in names)
        data = len(entries).to_bytes(2, "big") + entries
        return b"\x00\x00" + len(data).to_bytes(2, "big") + data

    assert parse_client_hello(hello(sni(b"one.example"))) == "one.example"
    with pytest.raises(ClientHelloError, match="twice"):
        parse_client_hello(hello(sni(b"one.example") + sni(b"two.example")))
    with pytest.raises(ClientHelloError, match="two host names"):
        parse_client_hello(hello(sni(b"one.example", b"two.example")))
    with pytest.raises(ClientHelloError, match="ASCII"):
        parse_client_hello(hello(sni("bü.example".encode())))

//! PROXY protocol version 2: the client address as a hospital's load balancer saw it.
//!
//! A TCP load balancer in front of Portcullis hides the client's address; with the PROXY
//! protocol it sends a small binary header first that names it. The header is read only from
//! peers in `server.trusted_proxies` (anyone else could name any address) and only when
//! `server.proxy_protocol` is on. Exactly the header's bytes are consumed, so the TLS
//! handshake that follows is untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Largest address-and-TLV block accepted; real headers are tens of bytes.
const MAX_BODY: usize = 1024;

const COMMAND_LOCAL: u8 = 0x0;
const COMMAND_PROXY: u8 = 0x1;
const FAMILY_INET: u8 = 0x1;
const FAMILY_INET6: u8 = 0x2;
const TRANSPORT_STREAM: u8 = 0x1;

/// Why a connection's PROXY header was refused (the connection is then closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The first bytes are not the version 2 signature.
    #[error("the connection did not start with a PROXY protocol v2 header")]
    Signature,
    /// Version other than 2, or a command other than LOCAL and PROXY.
    #[error("unsupported PROXY protocol version or command")]
    Version,
    /// The address block is longer than any real header or shorter than its family needs.
    #[error("malformed PROXY protocol address block")]
    Length,
    /// The connection closed or failed mid-header.
    #[error("the connection ended inside the PROXY header")]
    Truncated,
}

/// Reads one header and returns the client it names. `None` means the header carries no
/// usable client (LOCAL health checks, UNIX or datagram families): use the TCP peer.
pub async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut fixed = [0u8; 16];
    stream
        .read_exact(&mut fixed)
        .await
        .map_err(|_| ProxyHeaderError::Truncated)?;
    if fixed[..12] != SIGNATURE {
        return Err(ProxyHeaderError::Signature);
    }
    let version = fixed[12] >> 4;
    let command = fixed[12] & 0x0F;
    if version != 2 || !matches!(command, COMMAND_LOCAL | COMMAND_PROXY) {
        return Err(ProxyHeaderError::Version);
    }
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if length > MAX_BODY {
        return Err(ProxyHeaderError::Length);
    }
    let mut body = vec![0u8; length];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|_| ProxyHeaderError::Truncated)?;
    if command == COMMAND_LOCAL {
        return Ok(None);
    }
    parse_addresses(fixed[13], &body)
}

/// The source address of a PROXY command's address block.
fn parse_addresses(
    family_and_transport: u8,
    body: &[u8],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let family = family_and_transport >> 4;
    let transport = family_and_transport & 0x0F;
    if transport != TRANSPORT_STREAM {
        return Ok(None);
    }
    let port_at = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match family {
        FAMILY_INET => {
            if body.len() < 12 {
                return Err(ProxyHeaderError::Length);
            }
            let source = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(source), port_at(8))))
        }
        FAMILY_INET6 => {
            if body.len() < 36 {
                return Err(ProxyHeaderError::Length);
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let source = Ipv6Addr::from(octets);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(source).to_canonical(),
                port_at(32),
            )))
        }
        _ => Ok(None),
    }
}

/// Builds a version 2 PROXY header for `source` → `destination` (both of one family).
///
/// Portcullis never sends one; this is for tests and tools that stand in for a load balancer.
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut header = SIGNATURE.to_vec();
    header.push(0x20 | COMMAND_PROXY);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            header.push((FAMILY_INET << 4) | TRANSPORT_STREAM);
            header.extend_from_slice(&12u16.to_be_bytes());
            header.extend_from_slice(&s.ip().octets());
            header.extend_from_slice(&d.ip().octets());
            header.extend_from_slice(&s.port().to_be_bytes());
            header.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            header.push((FAMILY_INET6 << 4) | TRANSPORT_STREAM);
            header.extend_from_slice(&36u16.to_be_bytes());
            header.extend_from_slice(&v6(s).octets());
            header.extend_from_slice(&v6(d).octets());
            header.extend_from_slice(&s.port().to_be_bytes());
            header.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
        let mut cursor = bytes;
        read_header(&mut cursor).await
    }

    #[tokio::test]
    async fn reads_ipv4_and_ipv6_sources_and_consumes_only_the_header() {
        let source: SocketAddr = "203.0.113.9:51000".parse().unwrap();
        let mut bytes = encode(source, "10.0.0.5:443".parse().unwrap());
        bytes.extend_from_slice(b"\x16\x03\x01rest");
        let mut cursor = &bytes[..];
        assert_eq!(read_header(&mut cursor).await, Ok(Some(source)));
        assert_eq!(cursor, b"\x16\x03\x01rest");

        let source: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let bytes = encode(source, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(read(&bytes).await, Ok(Some(source)));
    }

    #[tokio::test]
    async fn local_commands_and_other_families_name_no_client() {
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(read(&local).await, Ok(None));
        let mut unix = SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0x00, 0x04, 1, 2, 3, 4]);
        assert_eq!(read(&unix).await, Ok(None));
    }

    #[tokio::test]
    async fn malformed_headers_are_refused() {
        assert_eq!(
            read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
            Err(ProxyHeaderError::Signature)
        );
        let mut v1 = SIGNATURE.to_vec();
        v1.extend_from_slice(&[0x11, 0x11, 0x00, 0x0c]);
        assert_eq!(read(&v1).await, Err(ProxyHeaderError::Version));
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]);
        assert_eq!(read(&short).await, Err(ProxyHeaderError::Length));
        let mut huge = SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(read(&huge).await, Err(ProxyHeaderError::Length));
        let mut truncated = encode(
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.2:2".parse().unwrap(),
        );
        truncated.truncate(20);
        assert_eq!(read(&truncated).await, Err(ProxyHeaderError::Truncated));
    }
}

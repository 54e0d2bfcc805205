//! The PROXY protocol v2 header (HAProxy's `send-proxy-v2`): sent first on
//! a backend connection so the backend sees the client's address and the
//! address it connected to, not the proxy's.
//!
//! Binary form: the 12-byte signature, version 2 and command PROXY, the
//! family (TCP over IPv4 or IPv6), the length of what follows, then source
//! address, destination address, source port, destination port. IPv4
//! addresses mapped into IPv6 are sent as IPv4 when both ends are.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A header, without allocating: at most 16 + 36 bytes.
pub struct Header {
    buf: [u8; 52],
    len: usize,
}

impl Header {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The header for a connection from `client` to `local` (the proxy's
/// address the client connected to).
pub fn v2(client: SocketAddr, local: SocketAddr) -> Header {
    let mut buf = [0u8; 52];
    buf[..12].copy_from_slice(&SIGNATURE);
    buf[12] = 0x21; // version 2, PROXY
    let (src, dst) = (unmap(client.ip()), unmap(local.ip()));
    let len = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            buf[13] = 0x11; // TCP over IPv4
            buf[14..16].copy_from_slice(&12u16.to_be_bytes());
            buf[16..20].copy_from_slice(&s.octets());
            buf[20..24].copy_from_slice(&d.octets());
            buf[24..26].copy_from_slice(&client.port().to_be_bytes());
            buf[26..28].copy_from_slice(&local.port().to_be_bytes());
            28
        }
        (s, d) => {
            buf[13] = 0x21; // TCP over IPv6
            buf[14..16].copy_from_slice(&36u16.to_be_bytes());
            buf[16..32].copy_from_slice(&v6(s).octets());
            buf[32..48].copy_from_slice(&v6(d).octets());
            buf[48..50].copy_from_slice(&client.port().to_be_bytes());
            buf[50..52].copy_from_slice(&local.port().to_be_bytes());
            52
        }
    };
    Header { buf, len }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Addresses, Command, Header as Parsed, Protocol};
    use proptest::prelude::*;

    fn parse(h: &Header) -> (SocketAddr, SocketAddr) {
        let parsed = Parsed::try_from(h.as_bytes()).expect("a valid PROXY v2 header");
        assert_eq!(parsed.command, Command::Proxy);
        assert_eq!(parsed.protocol, Protocol::Stream);
        assert_eq!(parsed.len(), h.as_bytes().len(), "nothing before or after");
        match parsed.addresses {
            Addresses::IPv4(a) => (
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            ),
            Addresses::IPv6(a) => (
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            ),
            other => panic!("unexpected addresses {other:?}"),
        }
    }

    #[test]
    fn ipv4_clients_as_haproxy_sends_them() {
        let client: SocketAddr = "192.0.2.7:51000".parse().unwrap();
        let local: SocketAddr = "10.0.0.1:5432".parse().unwrap();
        let h = v2(client, local);
        assert_eq!(h.as_bytes().len(), 28);
        assert_eq!(parse(&h), (client, local));
        // A v4-mapped client on a dual-stack listener is still IPv4.
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:51000".parse().unwrap();
        let local6: SocketAddr = "[::ffff:10.0.0.1]:5432".parse().unwrap();
        assert_eq!(parse(&v2(mapped, local6)), (client, local));
    }

    proptest! {
        /// Whatever the addresses, an independent parser (the `ppp` crate)
        /// reads back exactly the client and local addresses.
        #[test]
        fn any_address_pair_reads_back(
            a in any::<[u8; 16]>(), b in any::<[u8; 16]>(),
            pa in any::<u16>(), pb in any::<u16>(),
            v4a in any::<bool>(), v4b in any::<bool>(),
        ) {
            let ip = |bytes: [u8; 16], v4: bool| -> IpAddr {
                if v4 {
                    IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
                } else {
                    IpAddr::from(bytes)
                }
            };
            let client = SocketAddr::new(ip(a, v4a), pa);
            let local = SocketAddr::new(ip(b, v4b), pb);
            let (src, dst) = parse(&v2(client, local));
            let same = |sent: SocketAddr, got: SocketAddr| {
                sent.port() == got.port() && v6(unmap(sent.ip())) == v6(unmap(got.ip()))
            };
            prop_assert!(same(client, src), "{client} → {src}");
            prop_assert!(same(local, dst), "{local} → {dst}");
        }
    }
}

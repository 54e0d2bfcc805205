//! Raw HTTP/1 on a socket, the way hostile clients speak it: write bytes,
//! half-close, read every answer until the proxy closes.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// One answer as the client read it (interim 1xx answers are skipped).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Fields in order, names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Answered by the recording backend (not by the proxy itself).
    pub fn recorded(&self) -> bool {
        self.header("x-recorded").is_some()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes `request` on a new connection, closes the writing side, and
/// reads until the proxy closes (or `wait` passes): the answers, parsed.
pub async fn talk(addr: SocketAddr, request: &[u8]) -> Vec<Answer> {
    talk_from(None, addr, request, Duration::from_secs(10)).await
}

/// [`talk`] from a chosen local address (any 127.x.y.z on loopback).
pub async fn talk_from(
    local: Option<IpAddr>,
    addr: SocketAddr,
    request: &[u8],
    wait: Duration,
) -> Vec<Answer> {
    let mut s = connect_from(local, addr).await;
    s.write_all(request).await.expect("write the request");
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    answers(&out, &[])
}

pub async fn connect_from(local: Option<IpAddr>, addr: SocketAddr) -> TcpStream {
    match local {
        None => TcpStream::connect(addr).await.expect("connect"),
        Some(ip) => {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.bind(SocketAddr::new(ip, 0)).expect("bind");
            socket.connect(addr).await.expect("connect")
        }
    }
}

/// Asks for a WebSocket on `/ws` at `addr` (with RFC 6455's sample key) and
/// reads the answer's head, exactly (nothing after it): the connection and
/// the head.
pub async fn websocket_upgrade(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write the upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)
            .await
            .expect("read the answer's head");
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// A WebSocket text frame carrying `text` (under 126 bytes), masked as a
/// client must.
pub fn masked_text_frame(text: &[u8]) -> Vec<u8> {
    assert!(text.len() < 126, "a one-byte payload length");
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.iter().enumerate().map(|(i, c)| c ^ mask[i % 4]));
    frame
}

/// The answers in `bytes`, in order; the ones to HEAD requests (by
/// position in `heads`) have no body. Stops at the first incomplete one.
pub fn answers(bytes: &[u8], heads: &[bool]) -> Vec<Answer> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut slots);
        let len = match resp.parse(&bytes[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => break,
        };
        let status = resp.code.unwrap_or(0);
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        at += len;
        if (100..200).contains(&status) {
            continue;
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let head_request = heads.get(out.len()).copied().unwrap_or(false);
        let body = if head_request || status == 204 || status == 304 {
            Vec::new()
        } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            loop {
                let Some(nl) = bytes[at..].windows(2).position(|w| w == b"\r\n") else {
                    return out;
                };
                let size = usize::from_str_radix(
                    std::str::from_utf8(&bytes[at..at + nl]).unwrap_or("x"),
                    16,
                );
                let Ok(size) = size else { return out };
                at += nl + 2;
                if size == 0 {
                    at += 2;
                    break;
                }
                if bytes.len() < at + size + 2 {
                    return out;
                }
                body.extend_from_slice(&bytes[at..at + size]);
                at += size + 2;
            }
            body
        } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if bytes.len() < at + n {
                return out;
            }
            at += n;
            bytes[at - n..at].to_vec()
        } else {
            let body = bytes[at..].to_vec();
            at = bytes.len();
            body
        };
        out.push(Answer {
            status,
            headers,
            body,
        });
    }
    out
}

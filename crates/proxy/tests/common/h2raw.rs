//! A raw HTTP/2 (h2c, prior knowledge) client that sends what well-behaved
//! clients cannot: any field name and value (CR, LF, NUL, uppercase,
//! connection-specific fields), `content-length` that disagrees with the
//! DATA frames. Field blocks are HPACK literals without indexing; answers'
//! field blocks are not decoded (the recording backend's body names the
//! request it answered, which is all a test needs).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// One request stream: its field block (pseudo-fields first, as given)
/// and its DATA frames.
#[derive(Debug, Clone)]
pub struct Stream {
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    pub data: Vec<Vec<u8>>,
}

/// What came back on one stream.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// A HEADERS frame came back: an answer (its status is not decoded).
    pub answered: bool,
    pub body: Vec<u8>,
    /// RST_STREAM's error code.
    pub reset: Option<u32>,
    pub ended: bool,
}

/// Sends `streams` on one new connection (stream ids 1, 3, 5...) and reads
/// until every stream ended, the connection closed, or `wait` passed.
/// Also says whether the server sent GOAWAY.
pub async fn exchange(
    addr: SocketAddr,
    streams: &[Stream],
    wait: Duration,
) -> (Vec<Outcome>, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    for (i, st) in streams.iter().enumerate() {
        let id = 2 * i as u32 + 1;
        let mut block = Vec::new();
        for (n, v) in &st.fields {
            literal(&mut block, n, v);
        }
        let flags = END_HEADERS | if st.data.is_empty() { END_STREAM } else { 0 };
        frame(&mut out, HEADERS, flags, id, &block);
        for (j, d) in st.data.iter().enumerate() {
            let last = j + 1 == st.data.len();
            frame(&mut out, DATA, if last { END_STREAM } else { 0 }, id, d);
        }
    }
    s.write_all(&out).await.expect("write");

    let mut results: HashMap<u32, Outcome> = HashMap::new();
    let mut goaway = false;
    let mut buf = Vec::new();
    let read_all = async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            while buf.len() >= 9 {
                let len =
                    (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let id = u32::from_be_bytes([buf[5] & 0x7f, buf[6], buf[7], buf[8]]);
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                let mut reply = Vec::new();
                match kind {
                    SETTINGS if flags & ACK == 0 => frame(&mut reply, SETTINGS, ACK, 0, &[]),
                    PING if flags & ACK == 0 => frame(&mut reply, PING, ACK, 0, &payload),
                    GOAWAY => goaway = true,
                    HEADERS => {
                        let r = results.entry(id).or_default();
                        r.answered = true;
                        r.ended |= flags & END_STREAM != 0;
                    }
                    DATA => {
                        let r = results.entry(id).or_default();
                        let data = if flags & 0x8 != 0 && !payload.is_empty() {
                            let pad = usize::from(payload[0]);
                            &payload[1..payload.len().saturating_sub(pad).max(1)]
                        } else {
                            &payload[..]
                        };
                        r.body.extend_from_slice(data);
                        r.ended |= flags & END_STREAM != 0;
                    }
                    RST_STREAM => {
                        let r = results.entry(id).or_default();
                        r.reset = payload
                            .get(..4)
                            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                        r.ended = true;
                    }
                    _ => {}
                }
                if !reply.is_empty() && s.write_all(&reply).await.is_err() {
                    return;
                }
            }
            let all_done = (0..streams.len())
                .all(|i| results.get(&(2 * i as u32 + 1)).is_some_and(|r| r.ended));
            if all_done {
                return;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(wait, read_all).await;
    let outcomes = (0..streams.len())
        .map(|i| results.remove(&(2 * i as u32 + 1)).unwrap_or_default())
        .collect();
    (outcomes, goaway)
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK literal field without indexing, new name, no Huffman coding.
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    string(out, name);
    string(out, value);
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    // A 7-bit prefix integer (RFC 7541 §5.1), Huffman bit clear.
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// A request's pseudo-fields for `method` and `path` on `authority`.
pub fn request(method: &str, authority: &str, path: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (b":method".to_vec(), method.as_bytes().to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":authority".to_vec(), authority.as_bytes().to_vec()),
        (b":path".to_vec(), path.to_vec()),
    ]
}

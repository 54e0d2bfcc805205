//! A client for other nodes' admin ports: one plain HTTP GET, bounded in
//! time and size (the control plane asks a proxy's `/explain`, tandemctl
//! asks one directly). HTTP/1.0 with `Connection: close`, so the answer
//! is the rest of the stream, never chunked.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read.
const MAX_ANSWER: usize = 4 << 20;

/// `GET http://{addr}{path_and_query}`: the status and the body, within
/// `timeout` for the whole exchange.
pub async fn get(
    addr: &str,
    path_and_query: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    get_with_token(addr, path_and_query, timeout, None).await
}

/// [`get`] presenting `token` as `Authorization: Bearer <token>` (a
/// proxy's `/explain` and `/config` need one).
pub async fn get_with_token(
    addr: &str,
    path_and_query: &str,
    timeout: Duration,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    if token.is_some_and(|t| t.bytes().any(|b| !(0x21..=0x7e).contains(&b))) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a token is printable ASCII without spaces",
        ));
    }
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    if addr
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b == b'/' || b == b'@')
        || path_and_query.bytes().any(|b| !(0x21..=0x7e).contains(&b))
        || !path_and_query.starts_with('/')
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an admin address is host:port and a path /...",
        ));
    }
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER as u64 + 1)
            .read_to_end(&mut answer)
            .await?;
        if answer.len() > MAX_ANSWER {
            return Err(invalid("answer larger than 4 MiB"));
        }
        let end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| invalid("no complete HTTP head in the answer"))?;
        let status = std::str::from_utf8(&answer[..end])
            .ok()
            .and_then(|head| head.split(' ').nth(1))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| invalid("no HTTP status in the answer"))?;
        let body = String::from_utf8_lossy(&answer[end + 4..]).into_owned();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

/// Percent-encodes a query parameter's value (everything but unreserved
/// characters).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_encoded_whole() {
        assert_eq!(encode("/a b?c=d&e"), "%2Fa%20b%3Fc%3Dd%26e");
        assert_eq!(encode("shop.example-1_~"), "shop.example-1_~");
    }

    #[tokio::test]
    async fn an_answer_is_status_and_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /explain?host=a HTTP/1.0\r\n"));
            s.write_all(b"HTTP/1.0 400 Bad Request\r\ncontent-length: 5\r\n\r\nhost!")
                .await
                .unwrap();
        });
        let (status, body) = get(&addr, "/explain?host=a", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((status, body.as_str()), (400, "host!"));
        assert!(
            get(&addr, "no-slash", Duration::from_secs(1))
                .await
                .is_err()
        );
        assert!(get("a b:1", "/", Duration::from_secs(1)).await.is_err());
    }
}

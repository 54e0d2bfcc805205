//! Talking to the control plane, the parts every caller shares (nodes,
//! `tandemctl`, the test kit, the replicas' peer clients): the bearer token
//! ([`Bearer`], [`token_value`], [`read_token_file`]), channel settings
//! ([`ChannelSettings`]), mTLS to the control plane ([`TlsArgs`],
//! [`ClientTls`]: `https://` endpoints) and back-off between attempts
//! ([`Backoff`]).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint, Uri};

/// An error of any kind, for connecting.
pub type ConnectError = Box<dyn std::error::Error + Send + Sync>;

/// The flags of every component's certificate (flatten them into a
/// binary's `Args`): the CA bundle the other side must chain to, and this
/// component's certificate and key. The certificate and key are read again
/// when their files change (rotation without restart).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM bundle of the CA that signs component certificates (mTLS
    /// between Tandem's components; see `tandemctl certs init`).
    #[arg(long, env = "TANDEM_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// This component's certificate (PEM, leaf first), signed by that CA.
    #[arg(long, env = "TANDEM_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// This component's private key (PEM).
    #[arg(long, env = "TANDEM_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
}

impl TlsArgs {
    /// The three files, all or none: one or two of them set is an error
    /// naming the missing ones.
    pub fn files(&self) -> Result<Option<tandem_tls::component::Files>, String> {
        match (&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(tandem_tls::component::Files {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })),
            (ca, cert, key) => {
                let missing: Vec<&str> = [
                    ("TANDEM_TLS_CA_FILE", ca.is_none()),
                    ("TANDEM_TLS_CERT_FILE", cert.is_none()),
                    ("TANDEM_TLS_KEY_FILE", key.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, missing)| missing.then_some(name))
                .collect();
                Err(format!(
                    "mTLS needs all three of TANDEM_TLS_CA_FILE, TANDEM_TLS_CERT_FILE and \
                     TANDEM_TLS_KEY_FILE: {} unset",
                    missing.join(" and ")
                ))
            }
        }
    }

    /// The client side, when the files are set.
    pub fn client(&self) -> Result<Option<ClientTls>, String> {
        self.files()?.map(|f| ClientTls::from_files(&f)).transpose()
    }
}

/// mTLS to the control plane: the server's certificate checked against
/// the CA, ours presented (and read again when its files change).
#[derive(Clone)]
pub struct ClientTls(Arc<tokio_rustls::rustls::ClientConfig>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    pub fn from_files(files: &tandem_tls::component::Files) -> Result<Self, String> {
        tandem_tls::component::client_config(files)
            .map(|c| Self(Arc::new(c)))
            .map_err(|e| format!("TANDEM_TLS_*: {e}"))
    }

    pub fn from_config(config: tokio_rustls::rustls::ClientConfig) -> Self {
        Self(Arc::new(config))
    }
}

/// Opens TCP (from `local_ip` when set) and TLS to an `https://` URI's
/// host; the server's certificate must name that host.
#[derive(Clone)]
struct TlsConnect {
    tls: TlsConnector,
    local_ip: Option<IpAddr>,
}

impl tower::Service<Uri> for TlsConnect {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| format!("{uri}: no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| format!("{host:?} is not a DNS name or IP address"))?;
            let mut last = None;
            let mut tcp = None;
            for addr in tokio::net::lookup_host((host.as_str(), port)).await? {
                match connect_from(addr, this.local_ip).await {
                    Ok(s) => {
                        tcp = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let tcp = match (tcp, last) {
                (Some(tcp), _) => tcp,
                (None, Some(e)) => return Err(e.into()),
                (None, None) => return Err(format!("{host}: no address").into()),
            };
            tcp.set_nodelay(true)?;
            let tls = this.tls.connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

async fn connect_from(addr: SocketAddr, local_ip: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = local_ip.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

/// Compares a presented secret (token, CSRF token) with an expected one in
/// time that depends only on their lengths, so how long a refusal takes
/// says nothing of how much of the secret was right. The one comparison of
/// secrets in the workspace.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0
}

/// The one rule for a token given as a value (flag or variable): surrounding
/// white space is dropped, and an empty value counts as none.
pub fn token_value(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|t| !t.is_empty())
}

/// Reads a token file with the same rule as [`token_value`]: surrounding
/// white space (a trailing newline) is dropped; an empty file gives an empty
/// string, which each caller refuses or ignores as it always did.
pub fn read_token_file(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

/// The token does not fit a header: not printable ASCII, or a line break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidToken;

impl std::fmt::Display for InvalidToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the token must be printable ASCII without line breaks")
    }
}

impl std::error::Error for InvalidToken {}

/// Adds `authorization: Bearer <token>` to every call, when there is a
/// token (an interceptor, or [`Bearer::authorize`] for one request). The
/// header value is built once and marked sensitive (kept out of debug
/// output).
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        let Some(token) = token else {
            return Ok(Self(None));
        };
        let mut value =
            AsciiMetadataValue::try_from(format!("Bearer {token}")).map_err(|_| InvalidToken)?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }

    /// Whether a token is sent.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Adds the header to one request.
    pub fn authorize<T>(&self, req: &mut tonic::Request<T>) {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.authorize(&mut req);
        Ok(req)
    }
}

/// HTTP/2 keep-alive pings: a peer that vanished without closing its
/// connections is noticed within `interval + timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    pub interval: Duration,
    pub timeout: Duration,
    /// Ping while no call is open too (a watch stream's idle spells).
    pub while_idle: bool,
}

/// The settings of a control-plane channel. The presets are what each kind
/// of caller has always used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSettings {
    pub connect_timeout: Duration,
    /// A deadline for every call on the channel.
    pub request_timeout: Option<Duration>,
    pub keep_alive: Option<KeepAlive>,
}

impl ChannelSettings {
    /// A node (proxy, agent) following the control plane: a short connect
    /// timeout and keep-alives, so a control plane that vanished without
    /// closing its connections is noticed within seconds.
    pub const NODE: Self = Self {
        connect_timeout: Duration::from_secs(2),
        request_timeout: None,
        keep_alive: Some(KeepAlive {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            while_idle: true,
        }),
    };

    /// One replica calling another (raft messages, forwarded calls): peers
    /// sit on one network, so everything is short.
    pub const PEER: Self = Self {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Some(Duration::from_secs(2)),
        keep_alive: Some(KeepAlive {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            while_idle: false,
        }),
    };

    /// A one-off caller (`tandemctl`, tests): only a connect timeout.
    pub const fn connect_within(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            request_timeout: None,
            keep_alive: None,
        }
    }

    /// An endpoint for `url` with these settings.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(url.to_string())?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if let Some(timeout) = self.request_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        if let Some(k) = self.keep_alive {
            endpoint = endpoint
                .http2_keep_alive_interval(k.interval)
                .keep_alive_timeout(k.timeout)
                .keep_alive_while_idle(k.while_idle);
        }
        Ok(endpoint)
    }

    /// A channel to `url` that connects on first use: `https://` is mTLS
    /// with `tls` (an error without it), `http://` plain TCP. `local_ip`,
    /// when set, is the source address.
    pub fn connect_lazy(
        &self,
        url: &str,
        tls: Option<&ClientTls>,
        local_ip: Option<IpAddr>,
    ) -> Result<Channel, ConnectError> {
        let endpoint = self.endpoint(url)?.local_address(local_ip);
        Ok(match https(url, tls)? {
            Some(tls) => endpoint.connect_with_connector_lazy(TlsConnect {
                tls: TlsConnector::from(tls.0.clone()),
                local_ip,
            }),
            None => endpoint.connect_lazy(),
        })
    }

    /// A channel to `url`, connected now (see [`Self::connect_lazy`]).
    pub async fn connect(
        &self,
        url: &str,
        tls: Option<&ClientTls>,
    ) -> Result<Channel, ConnectError> {
        let endpoint = self.endpoint(url)?;
        Ok(match https(url, tls)? {
            Some(tls) => {
                endpoint
                    .connect_with_connector(TlsConnect {
                        tls: TlsConnector::from(tls.0.clone()),
                        local_ip: None,
                    })
                    .await?
            }
            None => endpoint.connect().await?,
        })
    }
}

/// The TLS to use for `url`: `https://` needs it.
fn https<'a>(url: &str, tls: Option<&'a ClientTls>) -> Result<Option<&'a ClientTls>, String> {
    if !url.starts_with("https://") {
        return Ok(None);
    }
    tls.map(Some).ok_or_else(|| {
        format!(
            "{url} is https:// (mTLS): set TANDEM_TLS_CA_FILE, TANDEM_TLS_CERT_FILE and \
             TANDEM_TLS_KEY_FILE (see `tandemctl certs init`)"
        )
    })
}

/// How much of the current back-off a wait takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// A random time up to the current back-off (at least half the
    /// minimum): callers that failed together do not come back in step.
    Full,
    /// Between half and all of the current back-off.
    Half,
    /// Exactly the current back-off (one caller alone, e.g. a database
    /// reconnect: its waits are logged as `retry_in`).
    None,
}

/// Exponential back-off with jitter and a cap: each wait doubles the next
/// one, up to `max`, until [`Backoff::reset`].
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: Jitter,
    current: Duration,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration, jitter: Jitter) -> Self {
        Self {
            min,
            max,
            jitter,
            current: min,
        }
    }

    /// A node reconnecting to the control plane: 100 ms doubling to 10 s,
    /// full jitter.
    pub const fn reconnect() -> Self {
        Self::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            Jitter::Full,
        )
    }

    /// Progress was made: the next wait starts small again.
    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// The next wait; the back-off then doubles up to its cap.
    pub fn next_wait(&mut self) -> Duration {
        let wait = match self.jitter {
            Jitter::Full => self
                .current
                .mul_f64(rand::random::<f64>())
                .max(self.min / 2),
            Jitter::Half => self.current.mul_f64(0.5 + rand::random::<f64>() / 2.0),
            Jitter::None => self.current,
        };
        self.current = (self.current * 2).min(self.max);
        wait
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::reconnect()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(!constant_time_eq(b"a", b""));
        assert!(constant_time_eq(b"", b""));
    }
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let min = Duration::from_millis(100);
        for (jitter, max) in [
            (Jitter::Full, Duration::from_secs(10)),
            (Jitter::Half, Duration::from_secs(2)),
            (Jitter::None, Duration::from_secs(1)),
        ] {
            let mut b = Backoff::new(min, max, jitter);
            let mut ceiling = min;
            for _ in 0..12 {
                let w = b.next_wait();
                let floor = match jitter {
                    Jitter::Full => min / 2,
                    Jitter::Half => ceiling / 2,
                    Jitter::None => ceiling,
                };
                assert!(
                    w >= floor && w <= ceiling,
                    "{jitter:?}: {w:?} not in {floor:?}..={ceiling:?}"
                );
                ceiling = (ceiling * 2).min(max);
            }
            assert_eq!(b.current, max, "{jitter:?} capped");
            b.reset();
            assert!(b.next_wait() <= min, "{jitter:?} reset");
        }
    }

    #[test]
    fn tokens_are_trimmed_once_and_become_sensitive_bearer_headers() {
        assert_eq!(token_value(Some(" t0k \n")), Some("t0k"));
        assert_eq!(token_value(Some("  ")), None);
        assert_eq!(token_value(None), None);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  from-file\r\n").unwrap();
        assert_eq!(read_token_file(&file).unwrap(), "from-file");
        std::fs::write(&file, "\n").unwrap();
        assert_eq!(read_token_file(&file).unwrap(), "");
        assert!(read_token_file(&dir.path().join("missing")).is_err());

        let mut bearer = Bearer::new(Some("s3cret")).unwrap();
        let req = bearer.call(tonic::Request::new(())).unwrap();
        let value = req.metadata().get("authorization").unwrap();
        assert_eq!(value, "Bearer s3cret");
        assert!(value.is_sensitive());
        let mut none = Bearer::new(None).unwrap();
        let req = none.call(tonic::Request::new(())).unwrap();
        assert!(req.metadata().get("authorization").is_none());
        assert_eq!(Bearer::new(Some("two\nlines")).unwrap_err(), InvalidToken);
    }

    #[test]
    fn channel_presets_keep_their_settings() {
        let e = ChannelSettings::NODE
            .endpoint("http://127.0.0.1:7400")
            .unwrap();
        assert!(e.get_tcp_nodelay());
        assert!(ChannelSettings::PEER.endpoint("not a url").is_err());
        assert!(
            ChannelSettings::connect_within(Duration::from_secs(1))
                .endpoint("http://[::1]:1")
                .is_ok()
        );
    }
}

/// The mark of the example secrets Tandem ships (compose's `.env.example`,
/// `scripts/run-local.py`): fine on a laptop, never in production.
pub const EXAMPLE_SECRET_MARK: &str = "change-me";

/// Refuses the shipped example tokens and passwords (`*-change-me`, in a
/// value or inside a URL) unless `dev` (`TANDEM_DEV=1` / `--dev`), naming
/// the first setting that holds one, in one line.
pub fn refuse_example_secrets(dev: bool, settings: &[(&str, Option<&str>)]) -> Result<(), String> {
    if dev {
        return Ok(());
    }
    match settings
        .iter()
        .find(|(_, v)| v.is_some_and(|v| v.contains(EXAMPLE_SECRET_MARK)))
    {
        Some((name, _)) => Err(format!(
            "refusing to start: {name} holds a shipped example secret (*-{EXAMPLE_SECRET_MARK}); \
             set your own, or TANDEM_DEV=1 (--dev) for a development setup"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod example_secrets {
    use super::*;

    #[test]
    fn example_secrets_are_refused_unless_dev() {
        let settings = [
            ("TANDEM_ADMIN_TOKEN", Some("a-real-one")),
            (
                "DATABASE_URL",
                Some("postgres://t:db-password-change-me@db/t"),
            ),
        ];
        let e = refuse_example_secrets(false, &settings).unwrap_err();
        assert!(
            e.starts_with("refusing to start: DATABASE_URL holds"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        assert!(refuse_example_secrets(true, &settings).is_ok());
        assert!(refuse_example_secrets(false, &settings[..1]).is_ok());
        assert!(refuse_example_secrets(false, &[("X", None)]).is_ok());
    }
}

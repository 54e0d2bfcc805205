//! The target set of `scripts/bench/agent.sh`: one process serving
//! `GET /healthz` (200) on many loopback ports, each declared as a backend
//! of one pool on the control plane, probed every `--interval-ms`.
//!
//! One process with many listeners rather than many `tandem-fake-backend`
//! processes: a thousand processes would cost more memory and scheduler
//! noise than the agent being measured. It prints `ready <n>` once every
//! backend is declared, then serves until killed.
//!
//! With `--tls-cert`, `--tls-key` and `--tls-ca` (PEM files) every listener
//! serves HTTPS (rustls) and the pool speaks TLS to its backends, verified
//! against the CA with SNI `localhost`: the agent's probes are then TLS.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tandem_client::{Bearer, ChannelSettings};
use tandem_proto::v1::{self, control_plane_client::ControlPlaneClient};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Parser)]
struct Args {
    /// Listeners (and backends) to create.
    #[arg(long, default_value_t = 1_000)]
    listeners: usize,
    /// A control-plane endpoint (http://host:port).
    #[arg(long, env = "TANDEM_CONTROL")]
    control: String,
    /// Admin token of the control plane.
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true)]
    token: String,
    /// Pool to create.
    #[arg(long, default_value = "bench")]
    pool: String,
    /// Probe interval of the pool, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    interval_ms: u32,
    /// Check kind: `http` (GET /healthz) or `tcp` (connect only).
    #[arg(long, default_value = "http")]
    kind: String,
    /// Serve HTTPS with this certificate chain (PEM file).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM file).
    #[arg(long)]
    tls_key: Option<std::path::PathBuf>,
    /// The CA the pool verifies the backends against (PEM file).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(acceptor(cert, key)?),
        _ => None,
    };
    let backend_tls = match &args.tls_ca {
        Some(ca) if tls.is_some() => Some(v1::BackendTls {
            enabled: Some(true),
            ca_pem: Some(std::fs::read_to_string(ca).context("--tls-ca")?),
            sni: Some("localhost".into()),
            ..Default::default()
        }),
        _ => None,
    };
    let mut addrs = Vec::with_capacity(args.listeners);
    for _ in 0..args.listeners {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(l.local_addr()?);
        tokio::spawn(serve(l, tls.clone()));
    }

    let channel = ChannelSettings::connect_within(Duration::from_secs(5))
        .endpoint(&args.control)?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.control))?;
    let bearer = Bearer::new(Some(&args.token))?;
    let mut client = ControlPlaneClient::with_interceptor(channel, bearer);
    client
        .create_pool(v1::CreatePoolRequest {
            pool: Some(v1::Pool {
                name: args.pool.clone(),
                health_check: Some(v1::HealthCheck {
                    kind: Some(match args.kind.as_str() {
                        "tcp" => v1::HealthCheckKind::Tcp.into(),
                        _ => v1::HealthCheckKind::Http.into(),
                    }),
                    path: Some("/healthz".into()),
                    interval_ms: Some(args.interval_ms),
                    timeout_ms: Some(args.interval_ms.min(1_000)),
                    ..Default::default()
                }),
                backend_tls,
                ..Default::default()
            }),
        })
        .await?;
    for a in &addrs {
        client
            .add_backend(v1::AddBackendRequest {
                pool: args.pool.clone(),
                backend: Some(v1::Backend {
                    address: a.to_string(),
                    ..Default::default()
                }),
                expected_revision: None,
            })
            .await?;
    }
    // The addresses too, for a side-by-side checker (HAProxy) to probe.
    for a in &addrs {
        println!("backend {a}");
    }
    println!("ready {}", addrs.len());
    std::future::pending::<()>().await;
    Ok(())
}

/// A TLS acceptor for the certificate and key in these PEM files.
fn acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    let chain = std::fs::read_to_string(cert).context("--tls-cert")?;
    let key = std::fs::read_to_string(key).context("--tls-key")?;
    tandem_testkit::certs::http1_acceptor(&chain, &key).context("--tls-cert, --tls-key")
}

async fn serve(listener: tokio::net::TcpListener, tls: Option<TlsAcceptor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok\n"))))
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(tls) => {
                    let Ok(stream) = tls.accept(stream).await else {
                        return;
                    };
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

//! mTLS between components: a replica serving its gRPC listener with
//! client certificates required (no certificate, or one from another CA,
//! is refused; the right one is served), its certificate rotated on disk
//! without a restart, and raft between three replicas over mTLS.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_client::ClientTls;
use tandem_proto::v1;
use tandem_testkit::{
    ADMIN_TOKEN, ComponentCerts, ControlCluster, ControlPlane, ControlPlaneOptions, Postgres,
    client_at_tls,
};
use tokio_rustls::rustls;

async fn status(endpoint: &str, tls: Option<&ClientTls>) -> anyhow::Result<v1::ClusterStatus> {
    let mut c = client_at_tls(endpoint, Some(ADMIN_TOKEN), tls).await?;
    Ok(c.get_cluster_status(v1::GetClusterStatusRequest {})
        .await?
        .into_inner())
}

/// The leaf certificate a new TLS handshake with `addr` is shown.
async fn served_leaf(addr: std::net::SocketAddr, certs: &ComponentCerts) -> Vec<u8> {
    let config = tandem_tls::component::client_config(&certs.files("admin")).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn only_clients_with_a_certificate_from_the_ca_are_served_and_rotation_needs_no_restart()
-> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let certs = Arc::new(ComponentCerts::new()?);
    let cp = ControlPlane::start_with(
        &pg.url(),
        ControlPlaneOptions {
            tls: Some(certs.clone()),
            ..Default::default()
        },
    )
    .await?;
    let endpoint = cp.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");

    // The right certificate: served.
    let admin = certs.client("admin")?;
    assert_eq!(status(&endpoint, Some(&admin)).await?.replica_id, 1);

    // No client certificate: the handshake is refused.
    let roots = tandem_tls::component::roots(&certs.files("admin"))?;
    let anonymous = ClientTls::from_config({
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = vec![b"h2".to_vec()];
        c
    });
    let refused = status(&endpoint, Some(&anonymous)).await;
    assert!(refused.is_err(), "no certificate was served: {refused:?}");

    // A certificate from another CA (the server's still checked against
    // ours): refused.
    let stranger = ComponentCerts::new()?;
    let mut files = stranger.files("admin");
    files.ca = certs.files("admin").ca;
    let stranger_tls = ClientTls::from_files(&files).map_err(anyhow::Error::msg)?;
    let refused = status(&endpoint, Some(&stranger_tls)).await;
    assert!(
        refused.is_err(),
        "another CA's certificate was served: {refused:?}"
    );

    // A server from another CA is refused by our clients too.
    let theirs = stranger.client("admin")?;
    assert!(status(&endpoint, Some(&theirs)).await.is_err());

    // Plain TCP to the TLS port: nothing is served.
    let plain = format!("http://{}", cp.grpc);
    assert!(status(&plain, None).await.is_err());

    // Rotation: an established connection keeps working, a new handshake
    // is shown the new certificate.
    let mut old = client_at_tls(&endpoint, Some(ADMIN_TOKEN), Some(&admin)).await?;
    old.get_cluster_status(v1::GetClusterStatusRequest {})
        .await?;
    let before = served_leaf(cp.grpc, &certs).await;
    certs.issue(
        "replica",
        "control-1",
        &["127.0.0.1".to_string(), "localhost".to_string()],
    )?;
    let after = served_leaf(cp.grpc, &certs).await;
    assert_ne!(
        before, after,
        "a new handshake still saw the old certificate"
    );
    let (cert_file, _) = certs.paths("control-1");
    let on_disk = rustls::pki_types::CertificateDer::from_pem_file(&cert_file)?;
    assert_eq!(
        after,
        on_disk.to_vec(),
        "the new handshake saw the new file"
    );
    old.get_cluster_status(v1::GetClusterStatusRequest {})
        .await
        .expect("the established connection continues");
    assert_eq!(status(&endpoint, Some(&admin)).await?.replica_id, 1);
    Ok(())
}

use rustls::pki_types::pem::PemObject as _;

#[tokio::test]
async fn three_replicas_elect_a_leader_over_mtls() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let certs = Arc::new(ComponentCerts::new()?);
    let ips = vec![IpAddr::from([127, 0, 0, 1]); 3];
    let mut cluster =
        ControlCluster::start_with_tls(&pg.url(), &ips, &[], Some(certs.clone())).await?;
    let (leader, _) = cluster.leader(&[], Duration::from_secs(30)).await?;
    assert!((1..=3).contains(&leader));
    // Every replica reports the same voters: raft messages flow over mTLS.
    for r in &cluster.replicas {
        let s = status(&r.endpoint(), Some(&certs.client("admin")?)).await?;
        assert_eq!(s.leader_id, leader);
        assert_eq!(s.members.len(), 3, "{s:?}");
    }
    Ok(())
}

//! Shared by the control plane's health tests: a pool to report on and the
//! probe results an agent would send.

use tandem_proto::v1;
use tandem_testkit::ControlPlane;

/// Creates pool `shop` probed every 200 ms with the given rise and fall,
/// holding `backends`.
pub async fn shop_pool(
    cp: &ControlPlane,
    rise: u32,
    fall: u32,
    backends: &[&str],
) -> anyhow::Result<()> {
    let mut c = cp.admin_client().await?;
    c.create_pool(v1::CreatePoolRequest {
        pool: Some(v1::Pool {
            name: "shop".into(),
            health_check: Some(v1::HealthCheck {
                interval_ms: Some(200),
                timeout_ms: Some(100),
                rise: Some(rise),
                fall: Some(fall),
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
    .await?;
    for addr in backends {
        c.add_backend(v1::AddBackendRequest {
            pool: "shop".into(),
            backend: Some(v1::Backend {
                address: addr.to_string(),
                ..Default::default()
            }),
            expected_revision: None,
        })
        .await?;
    }
    Ok(())
}

/// One probe result for a backend of pool `shop`.
pub fn obs(addr: &str, ok: bool) -> v1::Observation {
    v1::Observation {
        pool: "shop".into(),
        address: addr.into(),
        ok,
        detail: if ok { "HTTP 200" } else { "HTTP 503" }.into(),
        latency_ms: 1,
    }
}

//! Fault injection for demos: an operator holding `SHOP_ADMIN_TOKEN` can make
//! this instance answer 500s, answer slowly or hang, and turn it back off,
//! to show what Tandem does about a sick backend.
//!
//! ```text
//! PUT    /admin/fault   {"mode":"error"} | {"mode":"slow","delay_ms":2000} | {"mode":"hang"} | {"mode":"off"}
//! GET    /admin/fault   the current mode
//! DELETE /admin/fault   back to normal (hung requests then complete)
//! ```
//!
//! Faults apply to every route except `/admin/*` (so they can be turned off)
//! and `/metrics` (so the demo can be watched). `/healthz` and `/readyz` are
//! affected on purpose: a hung server's probes hang too.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::Error;
use crate::web::error_response;

/// The longest delay `slow` accepts, in milliseconds.
pub const MAX_DELAY_MS: u64 = 600_000;

/// How this instance misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Fault {
    /// Serve normally.
    #[default]
    Off,
    /// Answer every request with a 500 page.
    Error,
    /// Wait `delay_ms` milliseconds, then serve normally.
    Slow {
        #[serde(default = "default_delay_ms")]
        delay_ms: u64,
    },
    /// Accept requests and never answer (until the fault is turned off).
    Hang,
}

fn default_delay_ms() -> u64 {
    2_000
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Off => "off",
            Fault::Error => "error",
            Fault::Slow { .. } => "slow",
            Fault::Hang => "hang",
        }
    }
}

/// The current fault and who may change it.
#[derive(Clone)]
pub struct Faults {
    current: Arc<watch::Sender<Fault>>,
    token: Option<Arc<[u8]>>,
}

impl Faults {
    /// `token`: `SHOP_ADMIN_TOKEN`; without one, fault injection is off and
    /// its endpoints answer 404.
    pub fn new(token: Option<String>) -> Faults {
        let faults = Faults {
            current: Arc::new(watch::Sender::new(Fault::Off)),
            token: token
                .filter(|t| !t.is_empty())
                .map(|t| Arc::from(t.into_bytes())),
        };
        faults.record(Fault::Off);
        faults
    }

    pub fn current(&self) -> Fault {
        *self.current.borrow()
    }

    pub fn set(&self, fault: Fault) {
        self.current.send_replace(fault);
        self.record(fault);
        tracing::warn!(?fault, "fault injection changed");
    }

    fn record(&self, fault: Fault) {
        for mode in ["error", "slow", "hang"] {
            let on = if fault.name() == mode { 1.0 } else { 0.0 };
            metrics::gauge!("shop_fault_injected", "mode" => mode).set(on);
        }
    }

    /// Resolves once the fault is no longer `hang`.
    async fn until_not_hanging(&self) {
        let mut rx = self.current.subscribe();
        // Err means the sender is gone, which cannot happen while `self`
        // holds it; either way stop waiting.
        let _ = rx.wait_for(|f| *f != Fault::Hang).await;
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let token = self.token.as_ref().ok_or(Denied::Disabled)?;
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Denied::NoToken)?;
        if tandem_client::constant_time_eq(presented.as_bytes(), token) {
            Ok(())
        } else {
            Err(Denied::WrongToken)
        }
    }
}

/// Why a fault-injection call was refused.
enum Denied {
    Disabled,
    NoToken,
    WrongToken,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Disabled => (
                StatusCode::NOT_FOUND,
                "fault injection is disabled: start the shop with SHOP_ADMIN_TOKEN set\n",
            )
                .into_response(),
            Denied::NoToken => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "missing `Authorization: Bearer <SHOP_ADMIN_TOKEN>`\n",
            )
                .into_response(),
            Denied::WrongToken => (StatusCode::FORBIDDEN, "wrong admin token\n").into_response(),
        }
    }
}

/// Middleware: misbehaves as the current fault says.
pub async fn inject(State(faults): State<Faults>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/admin/") || path == "/metrics" {
        return next.run(req).await;
    }
    match faults.current() {
        Fault::Off => {}
        Fault::Error => return error_response(Error::InjectedFault, path.starts_with("/api/")),
        Fault::Slow { delay_ms } => tokio::time::sleep(Duration::from_millis(delay_ms)).await,
        Fault::Hang => faults.until_not_hanging().await,
    }
    next.run(req).await
}

// === admin endpoints ===

#[derive(Serialize)]
struct FaultStatus {
    fault: Fault,
}

pub async fn get_fault(State(faults): State<Faults>, headers: HeaderMap) -> Response {
    if let Err(denied) = faults.authorize(&headers) {
        return denied.into_response();
    }
    Json(FaultStatus {
        fault: faults.current(),
    })
    .into_response()
}

pub async fn put_fault(
    State(faults): State<Faults>,
    headers: HeaderMap,
    body: Result<Json<Fault>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(denied) = faults.authorize(&headers) {
        return denied.into_response();
    }
    let fault = match body {
        Ok(Json(f)) => f,
        Err(e) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "{}\nexpected {{\"mode\":\"error\"}}, {{\"mode\":\"slow\",\"delay_ms\":2000}}, \
                     {{\"mode\":\"hang\"}} or {{\"mode\":\"off\"}}\n",
                    e.body_text()
                ),
            )
                .into_response();
        }
    };
    if let Fault::Slow { delay_ms } = fault
        && delay_ms > MAX_DELAY_MS
    {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("delay_ms: must be at most {MAX_DELAY_MS} (got {delay_ms})\n"),
        )
            .into_response();
    }
    faults.set(fault);
    Json(FaultStatus { fault }).into_response()
}

pub async fn delete_fault(State(faults): State<Faults>, headers: HeaderMap) -> Response {
    if let Err(denied) = faults.authorize(&headers) {
        return denied.into_response();
    }
    faults.set(Fault::Off);
    Json(FaultStatus { fault: Fault::Off }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_from_json() {
        let parse = |s: &str| serde_json::from_str::<Fault>(s).ok();
        assert_eq!(parse(r#"{"mode":"off"}"#), Some(Fault::Off));
        assert_eq!(parse(r#"{"mode":"error"}"#), Some(Fault::Error));
        assert_eq!(parse(r#"{"mode":"hang"}"#), Some(Fault::Hang));
        assert_eq!(
            parse(r#"{"mode":"slow","delay_ms":150}"#),
            Some(Fault::Slow { delay_ms: 150 })
        );
        assert_eq!(
            parse(r#"{"mode":"slow"}"#),
            Some(Fault::Slow { delay_ms: 2000 })
        );
        assert_eq!(parse(r#"{"mode":"explode"}"#), None);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(tandem_client::constant_time_eq(
            b"secret-token",
            b"secret-token"
        ));
        assert!(!tandem_client::constant_time_eq(
            b"secret-token",
            b"secret-tokem"
        ));
        assert!(!tandem_client::constant_time_eq(b"secret", b"secret-token"));
        assert!(!tandem_client::constant_time_eq(b"", b"x"));
    }

    #[tokio::test]
    async fn turning_hang_off_releases_waiters() {
        let faults = Faults::new(Some("t".into()));
        faults.set(Fault::Hang);
        let waiter = tokio::spawn({
            let faults = faults.clone();
            async move { faults.until_not_hanging().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        faults.set(Fault::Off);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released")
            .expect("joined");
    }
}

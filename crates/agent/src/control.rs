//! Talking to the control plane: who we are, the bearer token, channels.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// Who we are to the control plane.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_id: String,
    pub zone: String,
    pub token: Option<String>,
}

impl Identity {
    /// Adds `authorization: Bearer <token>` when we have a token.
    pub fn authorize<T>(&self, req: &mut tonic::Request<T>) -> Result<(), tonic::Status> {
        if let Some(token) = &self.token {
            let v = format!("Bearer {token}").parse().map_err(|_| {
                tonic::Status::invalid_argument("TANDEM_TOKEN is not a valid header value")
            })?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(())
    }
}

/// An endpoint with the settings every control-plane connection uses: a
/// short connect timeout and HTTP/2 keep-alives, so a control plane that
/// vanished without closing its connections is noticed within seconds.
pub fn endpoint(url: &str) -> Result<Endpoint, Error> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::Config(format!("TANDEM_CONTROL: {url:?} is not a valid URL: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

/// A channel that connects on first use and reconnects by itself.
pub fn lazy_channel(url: &str, timeout: Duration) -> Result<Channel, Error> {
    Ok(endpoint(url)?.timeout(timeout).connect_lazy())
}

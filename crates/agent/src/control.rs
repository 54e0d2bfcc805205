//! Talking to the control plane: who we are, the bearer token and the
//! endpoint settings come from `tandem-client`; the report channel is ours.

use std::time::Duration;

use tonic::transport::Channel;

pub use tandem_client::Identity;

use crate::Error;

/// A channel that connects on first use and reconnects by itself.
pub fn lazy_channel(url: &str, timeout: Duration) -> Result<Channel, Error> {
    Ok(tandem_client::endpoint(url)
        .map_err(Error::Config)?
        .timeout(timeout)
        .connect_lazy())
}

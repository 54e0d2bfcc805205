//! Talking to the control plane: who we are, the bearer token and the
//! endpoint settings come from `tandem-client`; the report channel is ours.

use std::time::Duration;

use tonic::transport::Channel;

pub use tandem_client::Identity;

use crate::Error;

/// A channel that connects on first use and reconnects by itself.
/// `https://` is mTLS with `me`'s certificate.
pub fn lazy_channel(url: &str, me: &Identity, timeout: Duration) -> Result<Channel, Error> {
    tandem_client::ChannelSettings {
        request_timeout: Some(timeout),
        ..tandem_client::ChannelSettings::NODE
    }
    .connect_lazy(url, me.tls.as_ref(), None)
    .map_err(|e| Error::Config(format!("TANDEM_CONTROL: {url:?}: {e}")))
}

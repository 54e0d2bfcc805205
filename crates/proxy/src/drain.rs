//! Graceful drain: a flag every request reads (no lock), and a channel
//! that wakes idle connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Tells connections to finish: a flag each request reads (no lock), and
/// a channel that wakes the idle ones.
#[derive(Clone)]
pub struct Drain {
    flag: Arc<AtomicBool>,
    wake: watch::Receiver<()>,
}

/// Starts the drain of every connection holding a [`Drain`].
pub struct DrainSignal {
    flag: Arc<AtomicBool>,
    wake: watch::Sender<()>,
}

pub fn new() -> (DrainSignal, Drain) {
    let flag = Arc::new(AtomicBool::new(false));
    let (tx, rx) = watch::channel(());
    (
        DrainSignal {
            flag: flag.clone(),
            wake: tx,
        },
        Drain { flag, wake: rx },
    )
}

impl DrainSignal {
    pub fn start(&self) {
        self.flag.store(true, Ordering::Release);
        self.wake.send_replace(());
    }
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Resolves once the drain has started.
    pub async fn started(&mut self) {
        while !self.is_draining() {
            if self.wake.changed().await.is_err() {
                return;
            }
        }
    }
}

//! The `tandem.v1` gRPC contract, generated from `proto/tandem/v1/`, and the
//! hand-written conversions between its messages and `tandem-core` types.
//!
//! Nothing here holds logic beyond mapping fields: defaults and bounds are
//! `tandem-core`'s. Everything past this crate sees only core types.

pub mod convert;

/// Generated code for package `tandem.v1`.
pub mod v1 {
    #![allow(clippy::all)] // generated code
    tonic::include_proto!("tandem.v1");
}

/// Encoded file descriptors, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tandem_descriptor");

pub use convert::ConvertError;

use std::time::Duration;

/// How often a proxy or agent reports its applied revision
/// (`ReportApplied`) while it stays the same: part of the contract, since
/// the control plane judges a node by it.
pub const REPORT_APPLIED_EVERY: Duration = Duration::from_secs(5);

/// A node that has not reported for this long is shown as stale
/// (`NodeStatus.stale`): three missed reports, so one slow or lost report
/// is not enough.
pub const NODE_STALE_AFTER: Duration = Duration::from_secs(3 * REPORT_APPLIED_EVERY.as_secs());

//! Rendering replies for people (aligned tables, one-line summaries) and for
//! scripts (JSON).
//!
//! The JSON shape is a contract: objects carry the field names of the
//! `tandem.v1` messages, enums are lowercase strings (`round_robin`,
//! `backup`, `draining`, `unhealthy`), unset optional fields are `null`.
//! Watch events and config changes keep the proto's oneof names as keys
//! (`{"revision": 7, "change": {"pool_deleted": "shop"}}`, `{"revision": 7,
//! "health": {...}}`). Everything here is pure: replies in, text out (the
//! current time is passed in).
//!
//! The pieces, by concern: [`names`] (proto enums as lowercase words),
//! [`json`] (the JSON mirror types of the replies), [`table`] (aligned
//! columns and `key: value` fields, the one layout every text uses),
//! [`declared`] (pools, backends, routes, certificates and snapshots as
//! text), [`status`] (`status`: nodes, traffic, answers from memory),
//! [`health`] (what a command learnt of health, merged with the backends no
//! agent reported on, and its text), [`cluster`] (`cluster status`) and
//! [`watch`] (watch events as lines).

mod cluster;
mod declared;
mod health;
mod json;
mod names;
mod status;
mod table;
#[cfg(test)]
mod testdata;
mod watch;

// What the commands use; the rest stays inside `output`.
pub use cluster::cluster_status;
pub use declared::{
    backend_list, certificates_table, pool_detail, pools_table, route_list, snapshot, unix_date,
};
pub use health::{
    Health, health_reply, single_active_alerts, unreported_unknown_note, with_unreported,
};
pub use json::{
    BackendJson, BackendReplyJson, BackendsJson, CertificateJson, CertificateReplyJson,
    CertificatesJson, ChangeReplyJson, ClusterStatusJson, HealthJson, OverrideReplyJson, PoolJson,
    PoolReplyJson, PoolsJson, RouteJson, RouteReplyJson, RoutesJson, SnapshotJson, StaleJson,
    StatusJson, TcpRouteJson, TcpRouteReplyJson, WatchEventJson, to_json, to_json_line,
};
pub use names::{admin_state_name, route_host};
pub use status::{stale_warning, status};
pub use table::{Table, fields};
pub use watch::WatchText;

//! Widget Works, the sample shop that shows what Tandem is for: a catalogue,
//! a server-side cart, checkout and orders, as HTML pages and a JSON API.
//!
//! It owns its own Postgres database and migrations (`migrations/` in this
//! crate) and must never share a database with the control plane. Any
//! number of instances can serve the same shop: carts live in the database,
//! keyed by a cookie. Every response names the instance that served it
//! (`X-Served-By`, and a badge on every page), and an operator can inject
//! faults (500s, slowness, hangs) to show what the proxy does about them.
//!
//! `main.rs` parses [`Config`] and calls [`server::run`]; everything else is
//! here, where tests can reach it.

mod config;
mod error;
mod faults;
mod html;
mod model;
pub mod server;
mod store;
mod web;

pub use config::Config;
pub use error::Error;

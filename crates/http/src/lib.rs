//! Tandem's HTTP/1 codec: pure code, no I/O, on `httparse`, `http` and
//! `bytes`. The proxy's client-facing server, its upstream client and the
//! agent's probes all read and write HTTP/1 through it, so there is one
//! set of framing rules and one strictness.
//!
//! - [`request`]: the one request-head type ([`RequestHead`]) for HTTP/1
//!   and HTTP/2, and the rules that accept or refuse a head;
//! - [`target`]: request targets, hosts and path normalisation;
//! - [`response`]: backends' response heads and how their bodies end;
//! - [`chunked`] and [`body`]: reading bodies (chunked, by length, until
//!   close) and writing chunks;
//! - [`rewrite`]: the one header rewrite for requests going upstream (the
//!   proxy's own framing, hop-by-hop fields, `X-Forwarded-*`, trace
//!   context) and the heads written to HTTP/1 clients.
//!
//! It must never do I/O or know about routing, pools or retries.

pub mod body;
pub mod chunked;
pub mod fields;
pub mod request;
pub mod response;
pub mod rewrite;
pub mod target;

pub use body::{BodyDecoder, Piece};
pub use fields::{Fields, Span};
pub use request::{Body, ParseOptions, RequestError, RequestHead, Underscores, parse_request};
pub use response::{ResponseBody, ResponseError, ResponseHead, ResponseMeta};
pub use rewrite::{ClientFraming, Forwarding, UpstreamFraming};
pub use target::EncodedSlashes;

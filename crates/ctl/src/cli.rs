//! The command line: clap types, plus the two rules clap cannot express
//! (which token source wins, usage errors on one line).

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::duration::{Millis, StatusRange, parse_percent, parse_size, parse_timeout};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other error
  2  usage: bad flags or arguments, unreadable token file
  3  not found (NOT_FOUND)
  4  invalid argument (INVALID_ARGUMENT, OUT_OF_RANGE)
  5  conflict (ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED), e.g. a stale --expected-revision
  6  a replica answered UNAVAILABLE or DEADLINE_EXCEEDED: it is up but cannot do it now, e.g. its
     database is unreachable (nothing was changed; the message names the database and the replica)
  7  refused credentials (UNAUTHENTICATED, PERMISSION_DENIED)
  8  no replica answered: connections refused, no answer within --timeout, or a connection that
     broke mid-call

Errors are one line on stderr: `error: CODE: message`. While a replica cannot reach its
database, reads still answer from its copy in memory, with one `warning:` line on stderr
(and a `stale` object in -o json) saying so.";

/// tandemctl: the command-line client of the Tandem control plane.
///
/// Manages pools, backends and routes, follows configuration changes and health
/// transitions, and shows which proxies and agents run which revision, what
/// the agents say of each backend, and the state of the control plane's raft
/// group.
#[derive(Debug, Parser)]
#[command(name = "tandemctl", version, after_long_help = EXIT_CODES, after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 invalid argument, 5 conflict, 6 unavailable, 7 unauthenticated, 8 no answer (see --help).")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments, exiting with clap's message and code 2
    /// on bad usage.
    pub fn parse_args() -> Self {
        let mut command = Self::command();
        let cli = command
            .try_get_matches_from_mut(std::env::args_os())
            .and_then(|matches| Self::from_matches(&matches));
        cli.unwrap_or_else(|e| {
            let e = e.format(&mut command);
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            {
                e.exit(); // --help, --version, or help for a bare `tandemctl pool`
            }
            eprintln!("{}", usage_error_line(&e));
            std::process::exit(e.exit_code());
        })
    }

    pub fn try_parse_args_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        Self::from_matches(&matches)
    }

    fn from_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut cli = Self::from_arg_matches(matches)?;
        let from_command_line =
            |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        cli.global
            .pick_token_source(from_command_line("token"), from_command_line("token_file"))?;
        Ok(cli)
    }
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Control-plane endpoint(s), comma-separated: tried in order until one
    /// connects and answers (a replica gets 2s to answer when another
    /// follows). `http://` is assumed when no scheme is given.
    #[arg(
        long,
        global = true,
        env = "TANDEM_ENDPOINT",
        hide_env_values = true,
        default_value = "http://127.0.0.1:7400"
    )]
    pub endpoint: String,

    /// Bearer token sent as `authorization: Bearer <token>` on every call.
    #[arg(long, global = true, env = "TANDEM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the token (surrounding whitespace ignored). A token given
    /// on the command line wins over one from the environment.
    #[arg(
        long,
        global = true,
        env = "TANDEM_TOKEN_FILE",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub token_file: Option<PathBuf>,

    /// Output format: aligned tables for people, JSON for scripts (field names
    /// of the tandem.v1 messages, enums as lowercase strings).
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// This client's certificate, for https:// endpoints (mTLS).
    #[command(flatten)]
    pub tls: tandem_client::TlsArgs,

    /// Time allowed for connecting and for each call (e.g. 10s, 500ms).
    #[arg(long, global = true, value_parser = parse_timeout, default_value = "10s")]
    pub timeout: Duration,
}

/// A usage error as one line, like every other error: clap's message and
/// its tips, without the usage block and the "try --help" footer.
pub fn usage_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    text.split("\n\n")
        .filter(|p| {
            let p = p.trim_start();
            !p.is_empty() && !p.starts_with("Usage:") && !p.starts_with("For more information")
        })
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("; ")
}

impl GlobalArgs {
    /// Keeps one of `--token` and `--token-file`. Both may come from the
    /// environment, so clap's `conflicts_with` would refuse a user who
    /// exported TANDEM_TOKEN_FILE and then passed --token: instead the
    /// command line beats the environment, and TANDEM_TOKEN beats
    /// TANDEM_TOKEN_FILE.
    pub fn pick_token_source(
        &mut self,
        token_on_command_line: bool,
        file_on_command_line: bool,
    ) -> Result<(), clap::Error> {
        match (token_on_command_line, file_on_command_line) {
            (true, true) => {
                return Err(Cli::command().error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--token and --token-file cannot be used together",
                ));
            }
            (false, true) => self.token = None,
            _ if self.token.is_some() => self.token_file = None,
            _ => {}
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

// Parsed once per process from the command line: the size of the pool
// settings variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, change and delete pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Add, change, drain and remove a pool's backends.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Send requests for a host and path prefix to a pool (HTTP), or every
    /// connection to a listen address (TCP, --tcp).
    #[command(subcommand)]
    Route(RouteCommand),
    /// Revision, answering replica, database reachability, every proxy and
    /// agent with the revision it runs and when it last reported (STALE
    /// after 15 s without a report; nodes report every 5 s), and every
    /// backend's health.
    Status,
    /// Every backend's health: state, since when, why, and each agent's view.
    #[command(after_long_help = EXIT_CODES)]
    Health(HealthArgs),
    /// Follow configuration changes and health transitions, a line each,
    /// until Ctrl-C.
    ///
    /// A snapshot summary and the full health state come first, then one
    /// line per change with its revision, and one per backend whose health
    /// changed, from the state last seen on the stream:
    /// `health pool=shop backend=10.0.0.5:3000 healthy→unhealthy reason="HTTP 503 from 2/2 agents"`.
    Watch(WatchArgs),
    /// The whole declared configuration at one revision; `save` and
    /// `restore` back it up and bring it back.
    Snapshot {
        #[command(subcommand)]
        action: Option<SnapshotCommand>,
    },
    /// The control plane's raft group.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Why this backend: what a proxy does with a request for URL (the
    /// route it takes and why, the pool, each backend's tier and state
    /// with the agents' reason, and the backend its policy picks now).
    Explain(ExplainArgs),
    /// TLS certificates for the proxies' HTTPS listeners: add (or rotate),
    /// list, remove. Private keys are stored encrypted and never shown.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Certificates Tandem's components present to each other (mTLS): a
    /// development CA and one certificate per component, written into a
    /// directory (no control plane needed).
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a new development CA (ca.pem, ca-key.pem) and one certificate
    /// and key (NAME.pem, NAME-key.pem) per component into DIR. Refuses to
    /// overwrite any of them without --force.
    Init(CertsInit),
    /// Issue one more certificate with the CA in --ca DIR.
    Create(CertsCreate),
}

#[derive(Debug, Clone, Args)]
pub struct CertsInit {
    /// Directory to write into (created if missing).
    pub dir: PathBuf,
    /// Control-plane replicas as NAME[=HOST,HOST...] (repeatable): each
    /// certificate serves for its name, localhost, 127.0.0.1 and the hosts
    /// given. Default: control-1, control-2, control-3.
    #[arg(long, value_name = "NAME[=HOSTS]")]
    pub replica: Vec<String>,
    /// Proxy names (comma-separated or repeated). Default: proxy-1, proxy-2.
    #[arg(long, value_delimiter = ',')]
    pub proxy: Vec<String>,
    /// Agent names. Default: agent-1, agent-2, agent-3.
    #[arg(long, value_delimiter = ',')]
    pub agent: Vec<String>,
    /// Admin names. Default: admin.
    #[arg(long, value_delimiter = ',')]
    pub admin: Vec<String>,
    /// Read-only operator names. Default: operator.
    #[arg(long, value_delimiter = ',')]
    pub operator: Vec<String>,
    /// Validity of the component certificates, in days (the CA: 3650).
    #[arg(long, default_value_t = tandem_tls::issue::LEAF_DAYS)]
    pub days: i64,
    /// Replace files that exist.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CertsCreate {
    /// Directory holding ca.pem and ca-key.pem.
    #[arg(long)]
    pub ca: PathBuf,
    /// admin, operator, replica, proxy or agent.
    #[arg(long)]
    pub role: String,
    /// The component's name (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub name: String,
    /// A host name or address it serves as (repeatable; replicas always
    /// get their name, localhost and 127.0.0.1).
    #[arg(long)]
    pub host: Vec<String>,
    /// Where to write NAME.pem and NAME-key.pem (default: the CA's directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Validity in days.
    #[arg(long, default_value_t = tandem_tls::issue::LEAF_DAYS)]
    pub days: i64,
    /// Replace files that exist.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Write the whole declared configuration, with its revision and store
    /// identity, to FILE (JSON, versioned). Certificates are saved by name
    /// and chain, never their private keys.
    Save { file: PathBuf },
    /// Show how FILE differs from the live configuration, then (after
    /// confirmation) replace the live configuration with it as one change:
    /// one new revision and a new store generation, so every proxy and
    /// agent takes a full snapshot. Refused if the configuration changed
    /// after the difference was shown.
    Restore {
        file: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// The request: http://host[:port]/path (the scheme may be left out).
    pub url: String,
    /// The proxy to ask, by node id, through the control plane (needed
    /// when several proxies have reported).
    #[arg(long, value_name = "NAME", conflicts_with = "admin")]
    pub proxy: Option<String>,
    /// Ask a proxy's admin port (host:port) directly, without the control
    /// plane.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// The client's IP address (ip_hash pools pick by it); default 0.0.0.0.
    #[arg(long, value_name = "IP")]
    pub client: Option<String>,
}

// === certificates ===

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Add a certificate, or replace the one with this name (rotation:
    /// new handshakes get it; established connections keep theirs). Refused
    /// (exit 4, nothing stored) if a file is not PEM, the key does not
    /// match the leaf, or the chain has expired.
    Add {
        /// Its name (a DNS label, e.g. `shop`).
        name: String,
        /// PEM chain: the leaf first, then intermediates.
        #[arg(long, value_name = "FILE")]
        cert_file: PathBuf,
        /// PEM private key of the leaf.
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
    /// Every certificate: names (SANs), expiry, key type, and the proxies
    /// that report serving it.
    List,
    /// Stop serving a certificate and forget it.
    Remove { name: String },
}

// === pools ===

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool. Unset settings take the control plane's defaults
    /// (round_robin; HTTP GET / every 2s, timeout 1s, rise 2, fall 3, 200-399).
    Create {
        /// Pool name: a DNS label (lowercase letters, digits, '-').
        name: String,
        #[command(flatten)]
        settings: PoolSettings,
    },
    /// Show a pool's settings and backends.
    Get { name: String },
    /// List every pool.
    List,
    /// Change a pool's settings (not its backends); unset flags keep their
    /// current values.
    ///
    /// Optimistic concurrency: tandemctl reads the pool first and sends the
    /// revision it read as the expected revision, so if someone else changes
    /// the pool in between, the update fails (exit code 5) instead of silently
    /// overwriting their change. Pass --expected-revision to pin it yourself,
    /// or --force to skip the check.
    Update {
        name: String,
        #[command(flatten)]
        settings: PoolSettings,
        /// Fail unless the pool is still at this revision.
        #[arg(long, value_name = "REVISION", conflicts_with = "force")]
        expected_revision: Option<u64>,
        /// Update whatever the pool's revision (last writer wins).
        #[arg(long)]
        force: bool,
    },
    /// Delete a pool and its backends (refused while a route targets it).
    Delete {
        name: String,
        /// Fail unless the pool is still at this revision.
        #[arg(long, value_name = "REVISION")]
        expected_revision: Option<u64>,
    },
}

/// Every pool setting of the control API. Bounds are checked by the control
/// plane, whose error names the field.
#[derive(Debug, Clone, Default, Args)]
pub struct PoolSettings {
    /// Load-balancing policy.
    #[arg(long, value_enum, help_heading = "Pool settings")]
    pub policy: Option<Policy>,

    /// Active health check: HTTP request or TCP connect.
    #[arg(long, value_enum, help_heading = "Health check")]
    pub health_kind: Option<HealthKind>,
    /// HTTP path to probe, e.g. /healthz.
    #[arg(long, value_name = "PATH", help_heading = "Health check")]
    pub health_path: Option<String>,
    /// Probe this port of each backend's host instead of its traffic port
    /// (e.g. 8008, Patroni's REST API beside Postgres); 0: the traffic port.
    #[arg(long, value_name = "PORT", help_heading = "Health check")]
    pub health_port: Option<u16>,
    /// HTTP method: GET, HEAD, OPTIONS or POST.
    #[arg(long, value_name = "METHOD", help_heading = "Health check")]
    pub health_method: Option<String>,
    /// Host header to send (default: the backend's address).
    #[arg(long, value_name = "HOST", help_heading = "Health check")]
    pub health_host: Option<String>,
    /// Statuses that count as healthy: MIN-MAX (e.g. 200-399) or one status.
    #[arg(long, value_name = "RANGE", help_heading = "Health check")]
    pub health_status: Option<StatusRange>,
    /// Time between probes (e.g. 2s; at least 100ms).
    #[arg(long, value_name = "DURATION", help_heading = "Health check")]
    pub health_interval: Option<Millis>,
    /// Probe timeout (e.g. 1s; at most the interval).
    #[arg(long, value_name = "DURATION", help_heading = "Health check")]
    pub health_timeout: Option<Millis>,
    /// Consecutive successes before a backend is healthy.
    #[arg(long, value_name = "N", help_heading = "Health check")]
    pub health_rise: Option<u32>,
    /// Consecutive failures before a backend is unhealthy.
    #[arg(long, value_name = "N", help_heading = "Health check")]
    pub health_fall: Option<u32>,

    /// Upstream connect timeout (e.g. 1s).
    #[arg(long, value_name = "DURATION", help_heading = "Timeouts and retries")]
    pub connect_timeout: Option<Millis>,
    /// Whole-request timeout, retries included (e.g. 30s).
    #[arg(long, value_name = "DURATION", help_heading = "Timeouts and retries")]
    pub request_timeout: Option<Millis>,
    /// Extra attempts after the first (0 disables retries).
    #[arg(long, value_name = "N", help_heading = "Timeouts and retries")]
    pub retries: Option<u32>,
    /// Timeout of each attempt (e.g. 5s).
    #[arg(long, value_name = "DURATION", help_heading = "Timeouts and retries")]
    pub per_try_timeout: Option<Millis>,
    /// Retries allowed, as a percentage of active requests (e.g. 20 or 20%).
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, help_heading = "Timeouts and retries")]
    pub retry_budget: Option<u32>,

    /// Consecutive connect failures or 5xx that eject a backend (0 disables).
    #[arg(long, value_name = "N", help_heading = "Outlier detection")]
    pub outlier_failures: Option<u32>,
    /// First ejection time; it grows with each repeated ejection (e.g. 30s).
    #[arg(long, value_name = "DURATION", help_heading = "Outlier detection")]
    pub outlier_ejection: Option<Millis>,
    /// At most this percentage of backends ejected at once.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, help_heading = "Outlier detection")]
    pub outlier_max_ejected: Option<u32>,

    /// Below this percentage of usable primaries, spread traffic over all of
    /// them, healthy or not (0 disables panic mode; single_active has none).
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, help_heading = "Pool settings")]
    pub panic_threshold: Option<u32>,

    /// Close a TCP connection idle this long either way (e.g. 30m; 0: never).
    #[arg(long, value_name = "DURATION", help_heading = "TCP routes")]
    pub idle_timeout: Option<Millis>,
    /// Most connections open to one backend at once (0: no limit); further
    /// clients queue.
    #[arg(long, value_name = "N", help_heading = "TCP routes")]
    pub max_connections: Option<u32>,
    /// Most clients waiting for a backend slot; beyond it they are refused.
    #[arg(long, value_name = "N", help_heading = "TCP routes")]
    pub max_queue: Option<u32>,
    /// Longest a client waits in that queue (e.g. 5s).
    #[arg(long, value_name = "DURATION", help_heading = "TCP routes")]
    pub queue_timeout: Option<Millis>,
    /// Established connections to a backend that becomes unhealthy, is
    /// disabled or removed: close them (after --unhealthy-grace) or keep
    /// them; `policy`: close for single_active, keep otherwise.
    #[arg(long, value_enum, help_heading = "TCP routes")]
    pub on_unhealthy: Option<OnUnhealthyArg>,
    /// How long such connections may go on before they are closed (e.g. 0s).
    #[arg(long, value_name = "DURATION", help_heading = "TCP routes")]
    pub unhealthy_grace: Option<Millis>,
    /// PROXY protocol header towards the backends, carrying the client's
    /// address: v2, or none.
    #[arg(long, value_enum, help_heading = "TCP routes")]
    pub proxy_protocol: Option<ProxyProtocolArg>,

    /// Largest request body the proxy passes on (e.g. 10MiB, 512k; 0: no
    /// limit); larger ones get 413.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = "HTTP limits")]
    pub max_request_body: Option<u64>,
    /// Longest an upstream keep-alive connection is reused after sitting
    /// idle (e.g. 4s; 0: a new connection per request). A backend's
    /// `Keep-Alive: timeout=` shortens it.
    #[arg(long, value_name = "DURATION", help_heading = "HTTP limits")]
    pub upstream_idle_timeout: Option<Millis>,
    /// An upgraded (WebSocket) connection silent both ways for this long is
    /// closed (e.g. 5m).
    #[arg(long, value_name = "DURATION", help_heading = "HTTP limits")]
    pub tunnel_idle_timeout: Option<Millis>,

    /// Speak TLS to the backends (HTTP routes), verifying their
    /// certificates against --backend-ca-file or, without one, the Mozilla
    /// root store.
    #[arg(long, help_heading = "TLS to backends")]
    pub backend_tls: bool,
    /// Plain HTTP to the backends again.
    #[arg(long, help_heading = "TLS to backends", conflicts_with_all = ["backend_tls", "backend_ca_file", "backend_sni", "backend_tls_insecure"])]
    pub no_backend_tls: bool,
    /// PEM CA bundle the backends' certificates are verified against (its
    /// contents are sent; turns TLS to the backends on).
    #[arg(long, value_name = "FILE", value_parser = read_pem_file, help_heading = "TLS to backends")]
    pub backend_ca_file: Option<String>,
    /// The name sent as SNI and verified in the backends' certificates
    /// (default: each backend's host; "" goes back to it).
    #[arg(long, value_name = "NAME", help_heading = "TLS to backends")]
    pub backend_sni: Option<String>,
    /// Accept any backend certificate, without verification (shown in
    /// `pool get`). A CA bundle turns verification back on.
    #[arg(
        long,
        help_heading = "TLS to backends",
        conflicts_with = "backend_ca_file"
    )]
    pub backend_tls_insecure: bool,
}

/// The contents of a PEM file named on the command line.
fn read_pem_file(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(text)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnUnhealthyArg {
    Close,
    Keep,
    /// Close for single_active pools, keep for the others.
    Policy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyProtocolArg {
    V2,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// Smooth weighted round-robin.
    #[value(name = "round_robin", alias = "round-robin")]
    RoundRobin,
    /// Fewest in-flight requests relative to weight.
    #[value(name = "least_connections", alias = "least-connections")]
    LeastConnections,
    /// Consistent hashing of the client address.
    #[value(name = "ip_hash", alias = "ip-hash")]
    IpHash,
    /// The less loaded of two weighted random picks.
    #[value(name = "random_two_choices", alias = "random-two-choices")]
    RandomTwoChoices,
    /// One member at a time: the first, by declared order, whose health
    /// check passes (database primaries).
    #[value(name = "single_active", alias = "single-active")]
    SingleActive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HealthKind {
    Http,
    Tcp,
}

// === backends ===

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Add a backend to a pool (enabled; weight 1 and primary unless told).
    Add {
        pool: String,
        /// host:port
        address: String,
        /// Relative share of traffic, 1-1000.
        #[arg(long)]
        weight: Option<u32>,
        /// Take traffic only while no primary is usable.
        #[arg(long)]
        backup: bool,
        /// Place in the pool's declared order, lowest first (single_active
        /// sends to the first usable); default: after the last.
        #[arg(long, value_name = "N")]
        order: Option<u32>,
        #[command(flatten)]
        expect: ExpectRevision,
    },
    /// Change a backend's weight, role or place in the declared order.
    Update {
        pool: String,
        address: String,
        /// Relative share of traffic, 1-1000.
        #[arg(long)]
        weight: Option<u32>,
        /// Make it a backup.
        #[arg(long, conflicts_with = "primary")]
        backup: bool,
        /// Make it a primary.
        #[arg(long)]
        primary: bool,
        /// Place in the pool's declared order, lowest first.
        #[arg(long, value_name = "N")]
        order: Option<u32>,
        #[command(flatten)]
        expect: ExpectRevision,
    },
    /// Stop sending new requests to a backend; in-flight ones finish.
    Drain(BackendRef),
    /// Let a drained or disabled backend take traffic again.
    Enable(BackendRef),
    /// Take a backend out of service.
    Disable(BackendRef),
    /// Remove a backend from its pool.
    Remove(BackendRef),
    /// List a pool's backends, with their health.
    List { pool: String },
}

#[derive(Debug, Clone, Args)]
pub struct BackendRef {
    pub pool: String,
    /// host:port
    pub address: String,
    #[command(flatten)]
    pub expect: ExpectRevision,
}

#[derive(Debug, Clone, Copy, Default, Args)]
pub struct ExpectRevision {
    /// Fail unless the pool is still at this revision.
    #[arg(long, value_name = "REVISION")]
    pub expected_revision: Option<u64>,
}

// === routes ===

#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Send requests for a host and path prefix to a pool; or, with --tcp,
    /// every connection to a listen address (layer 4, bytes untouched).
    Add {
        /// Exact host (shop.example.com), wildcard (*.example.com) or any (*).
        #[arg(long, default_value = "*", conflicts_with = "tcp")]
        host: String,
        /// Path prefix; the longest matching one wins.
        #[arg(long, default_value = "/", conflicts_with = "tcp")]
        prefix: String,
        /// Target pool.
        #[arg(long)]
        pool: String,
        /// A TCP route: every proxy listens on --listen and forwards each
        /// connection to the pool.
        #[arg(long, requires = "listen")]
        tcp: bool,
        /// Where proxies listen for a TCP route: ip:port, e.g. 0.0.0.0:5432.
        #[arg(long, value_name = "IP:PORT", requires = "tcp")]
        listen: Option<String>,
        /// Answer requests that arrive over plain HTTP with a 308 to the
        /// same URL on https.
        #[arg(long, conflicts_with = "tcp")]
        redirect_https: bool,
        /// Send `Strict-Transport-Security: max-age=SECONDS` on answers
        /// over HTTPS (e.g. 31536000 for a year).
        #[arg(long, value_name = "SECONDS", conflicts_with = "tcp")]
        hsts_max_age: Option<u32>,
    },
    /// List every route, HTTP and TCP.
    List,
    /// Delete the route with this host and path prefix, or with --tcp the
    /// TCP route on --listen.
    Delete {
        /// The route's host, as listed (`*` for any host).
        #[arg(long, required_unless_present = "tcp", conflicts_with = "tcp")]
        host: Option<String>,
        /// The route's path prefix.
        #[arg(long, default_value = "/", conflicts_with = "tcp")]
        prefix: String,
        /// Delete a TCP route.
        #[arg(long, requires = "listen")]
        tcp: bool,
        /// The TCP route's listen address, as listed.
        #[arg(long, value_name = "IP:PORT", requires = "tcp")]
        listen: Option<String>,
    },
}

// === health and cluster ===

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Only this pool's backends (exit code 3 if there is no such pool).
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The raft group as the leader sees it: the role, the leader, the term,
    /// the commit and applied indexes, and each member's reachability (heard
    /// from within an election timeout), time since last heard, matched
    /// index, lag and replication state (replicate, probe, snapshot);
    /// unreachable members are named below the table. A follower forwards
    /// the question to the leader; when no leader answers it gives its own
    /// view, which knows only of itself and the leader (ask another replica
    /// with --endpoint).
    ///
    /// Exits 0 whenever the replica answers, even while no leader is known;
    /// 8 when no endpoint answers.
    #[command(after_long_help = EXIT_CODES)]
    Status,
    /// Adds a replica to the raft group as a learner: it catches up (from a
    /// snapshot if need be) and the leader promotes it to voter by itself.
    /// Run this first, then start the new replica with --join
    /// (TANDEM_RAFT_JOIN=existing) and TANDEM_RAFT_ID=ID. One change at a
    /// time; a replaced host gets a new ID.
    #[command(after_long_help = EXIT_CODES)]
    AddMember {
        /// The new member's raft id (a positive integer the group never had).
        id: u64,
        /// Its gRPC address as the other replicas reach it, host:port.
        address: String,
    },
    /// Removes a member from the raft group (the leader hands leadership
    /// over first when it is the one removed). Refused when the remaining
    /// voters would lack a reachable majority. Stop the removed replica
    /// afterwards.
    #[command(after_long_help = EXIT_CODES)]
    RemoveMember {
        /// The member's raft id.
        id: u64,
    },
}

// === watch ===

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Start after this revision of the store's current history: changes
    /// from the next one on (a snapshot first if the control plane no longer
    /// has them, or if that history was rewritten by a restore). Default: a
    /// snapshot of the current configuration.
    #[arg(long, value_name = "REVISION", default_value_t = 0)]
    pub from_revision: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Parses `tandemctl <line>`, the line split at spaces.
    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tandemctl").chain(line.split_whitespace()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_command_line_beats_the_environment_for_the_token() {
        let args = |token: Option<&str>, file: Option<&str>| {
            let mut g = Cli::try_parse_from(["tandemctl", "status"]).unwrap().global;
            g.token = token.map(Into::into);
            g.token_file = file.map(Into::into);
            g
        };
        // --token-file x with TANDEM_TOKEN exported: the file.
        let mut g = args(Some("env"), Some("cli-file"));
        g.pick_token_source(false, true).unwrap();
        assert_eq!((g.token, g.token_file), (None, Some("cli-file".into())));
        // --token x with TANDEM_TOKEN_FILE exported: the token.
        let mut g = args(Some("cli"), Some("env-file"));
        g.pick_token_source(true, false).unwrap();
        assert_eq!((g.token.as_deref(), g.token_file), (Some("cli"), None));
        // Both from the environment: TANDEM_TOKEN.
        let mut g = args(Some("env"), Some("env-file"));
        g.pick_token_source(false, false).unwrap();
        assert_eq!((g.token.as_deref(), g.token_file), (Some("env"), None));
        // Both on the command line: refused.
        let mut g = args(Some("a"), Some("b"));
        assert!(g.pick_token_source(true, true).is_err());
    }

    #[test]
    fn value_sources_are_seen_after_the_subcommand() {
        let e = Cli::try_parse_args_from([
            "tandemctl",
            "pool",
            "list",
            "--token",
            "a",
            "--token-file",
            "/x",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn usage_errors_are_one_line() {
        let line = |args: &[&str]| usage_error_line(&Cli::try_parse_args_from(args).unwrap_err());
        assert_eq!(
            line(&["tandemctl", "pool", "create"]),
            "error: the following required arguments were not provided: <NAME>"
        );
        let l = line(&[
            "tandemctl",
            "pool",
            "create",
            "a",
            "--health-interval",
            "soon",
        ]);
        assert!(l.starts_with("error: invalid value 'soon' for '--health-interval <DURATION>': invalid duration \"soon\""), "{l}");
        assert!(!l.contains('\n') && !l.contains("--help"), "{l}");
        let l = line(&["tandemctl", "pol"]);
        assert!(
            l.starts_with("error: unrecognized subcommand 'pol'; tip: "),
            "{l}"
        );
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse("pool list -o json --endpoint http://a:1,http://b:2").unwrap();
        assert_eq!(cli.global.output, Output::Json);
        assert_eq!(cli.global.endpoint, "http://a:1,http://b:2");
        assert_eq!(cli.global.timeout, Duration::from_secs(10));
    }

    #[test]
    fn pool_flags_parse_into_settings() {
        let cli = parse(
            "pool create shop --policy least_connections --health-path /healthz \
             --health-interval 1s --health-status 200-299 --retry-budget 20%",
        )
        .unwrap();
        let Command::Pool(PoolCommand::Create { name, settings }) = cli.command else {
            panic!("not pool create");
        };
        assert_eq!(name, "shop");
        assert_eq!(settings.policy, Some(Policy::LeastConnections));
        assert_eq!(settings.health_interval, Some(Millis(1_000)));
        assert_eq!(
            settings.health_status,
            Some(StatusRange { min: 200, max: 299 })
        );
        assert_eq!(settings.retry_budget, Some(20));
        assert_eq!(settings.health_fall, None);
    }

    #[test]
    fn tcp_routes_parse_and_exclude_http_flags() {
        let cli = parse("route add --tcp --listen 0.0.0.0:5432 --pool db").unwrap();
        let Command::Route(RouteCommand::Add {
            tcp, listen, pool, ..
        }) = cli.command
        else {
            panic!("not route add");
        };
        assert!(tcp);
        assert_eq!(
            (listen.as_deref(), pool.as_str()),
            (Some("0.0.0.0:5432"), "db")
        );
        for bad in [
            &["route", "add", "--tcp", "--pool", "db"][..],
            &["route", "add", "--listen", "0.0.0.0:5432", "--pool", "db"],
            &[
                "route",
                "add",
                "--tcp",
                "--listen",
                "0.0.0.0:1",
                "--host",
                "a",
                "--pool",
                "db",
            ],
            &["route", "delete", "--tcp"],
            &["route", "delete"],
        ] {
            let args = std::iter::once("tandemctl").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
        let cli = parse("route delete --tcp --listen 0.0.0.0:5432").unwrap();
        assert!(matches!(
            cli.command,
            Command::Route(RouteCommand::Delete { tcp: true, .. })
        ));
    }

    #[test]
    fn bad_durations_are_usage_errors() {
        let e = parse("pool create shop --health-interval soon").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("invalid duration \"soon\""), "{e}");
    }

    #[test]
    fn force_and_expected_revision_exclude_each_other() {
        let e = parse("pool update shop --force --expected-revision 3").unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn health_and_cluster_commands_parse() {
        let cli = parse("health --pool shop").unwrap();
        let Command::Health(args) = cli.command else {
            panic!("not health");
        };
        assert_eq!(args.pool.as_deref(), Some("shop"));
        let cli = parse("health -o json").unwrap();
        assert!(matches!(
            cli.command,
            Command::Health(HealthArgs { pool: None })
        ));
        assert_eq!(cli.global.output, Output::Json);
        let cli = Cli::try_parse_from(["tandemctl", "cluster", "status", "-o", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::Status)
        ));
        let help = Cli::command()
            .find_subcommand_mut("cluster")
            .and_then(|c| c.find_subcommand_mut("status"))
            .map(|c| c.render_long_help().to_string())
            .unwrap();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("--endpoint"), "{help}");
        let cli = Cli::try_parse_from(["tandemctl", "cluster", "add-member", "4", "10.0.0.4:7400"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::AddMember { id: 4, ref address }) if address == "10.0.0.4:7400"
        ));
        let cli = Cli::try_parse_from(["tandemctl", "cluster", "remove-member", "2"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::RemoveMember { id: 2 })
        ));
        assert!(
            Cli::try_parse_from(["tandemctl", "cluster", "remove-member", "two"]).is_err(),
            "an id is a number"
        );
    }
}

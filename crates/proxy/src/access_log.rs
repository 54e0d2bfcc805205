//! The optional access log: a line per request, written off the request
//! path.
//!
//! A request's answer carries a [`Pending`] entry (what was known when the
//! answer's head was ready); when the answer's body has been handed over
//! (or dropped), the entry gets its byte count and total duration and is
//! pushed into a bounded lock-free queue. One thread of its own takes the
//! entries out, formats them (JSON lines or the common log format with
//! Tandem's fields after it) and writes them. A full queue drops the line
//! and counts it (`tandem_proxy_access_log_dropped_total`): a request never
//! waits for the log. Entries hold shared buffers (`Bytes`, the table's
//! `Arc`) rather than copies: names are looked up by the writer.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Method, Version};
use metrics::Counter;

use crate::table::Table;

/// Line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// The common log format, then `key=value` pairs for the rest.
    Common,
}

/// Where and how to log.
#[derive(Debug, Clone)]
pub struct Options {
    /// A file (appended to), or `-` for standard output.
    pub path: PathBuf,
    pub format: Format,
    /// Lines waiting to be written at most; beyond, lines are dropped.
    pub buffer: usize,
}

/// The log: the queue and its writer thread.
pub struct AccessLog {
    queue: Arc<ArrayQueue<Entry>>,
    dropped: Counter,
    stop: Arc<AtomicBool>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// What is known of a request when its answer's head is ready.
pub struct Pending {
    pub started: Instant,
    pub at: SystemTime,
    pub client: IpAddr,
    pub method: Method,
    pub version: Version,
    pub host: Option<Bytes>,
    pub target: Bytes,
    pub status: u16,
    /// The table it was routed with, and its pool and backend there.
    pub table: Option<Arc<Table>>,
    pub pool: Option<usize>,
    pub backend: Option<usize>,
    pub tries: u8,
    pub trace_id: Option<u128>,
    /// From the start to the answer's head.
    pub head_after: Duration,
}

struct Entry {
    pending: Pending,
    bytes: u64,
    duration: Duration,
}

impl AccessLog {
    /// Opens the destination and starts the writer thread.
    pub fn start(options: &Options) -> std::io::Result<Arc<AccessLog>> {
        let out: Box<dyn Write + Send> = if options.path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&options.path)?,
            )
        };
        let queue = Arc::new(ArrayQueue::new(options.buffer.max(1)));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn({
                let (queue, stop, format) = (queue.clone(), stop.clone(), options.format);
                let written = metrics::counter!("tandem_proxy_access_log_lines_total");
                let failed = metrics::counter!("tandem_proxy_access_log_write_errors_total");
                move || write_loop(&queue, &stop, format, out, &written, &failed)
            })?;
        Ok(Arc::new(AccessLog {
            queue,
            dropped: metrics::counter!("tandem_proxy_access_log_dropped_total"),
            stop,
            writer: std::sync::Mutex::new(Some(writer)),
        }))
    }

    /// Queues a finished request's line, or drops it if the queue is full.
    pub fn push(&self, pending: Pending, bytes: u64) {
        let duration = pending.started.elapsed();
        let entry = Entry {
            pending,
            bytes,
            duration,
        };
        if self.queue.push(entry).is_err() {
            self.dropped.increment(1);
        }
    }

    /// Writes what is queued and stops the writer.
    pub fn close(&self) {
        self.stop.store(true, Ordering::Release);
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// How long the writer sleeps when the queue is empty: lines reach the
/// file within this, and an idle proxy wakes 50 times a second.
const IDLE: Duration = Duration::from_millis(20);

fn write_loop(
    queue: &ArrayQueue<Entry>,
    stop: &AtomicBool,
    format: Format,
    mut out: Box<dyn Write + Send>,
    written: &Counter,
    failed: &Counter,
) {
    let mut buf = Vec::with_capacity(64 << 10);
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let mut lines = 0;
        while let Some(entry) = queue.pop() {
            match format {
                Format::Json => json_line(&mut buf, &entry),
                Format::Common => common_line(&mut buf, &entry),
            }
            lines += 1;
            if buf.len() >= 60 << 10 {
                flush(&mut out, &mut buf, failed);
            }
        }
        if lines > 0 {
            flush(&mut out, &mut buf, failed);
            written.increment(lines);
        }
        if stopping {
            return;
        }
        if lines == 0 {
            std::thread::park_timeout(IDLE);
        }
    }
}

fn flush(out: &mut Box<dyn Write + Send>, buf: &mut Vec<u8>, failed: &Counter) {
    if let Err(e) = out.write_all(buf).and_then(|()| out.flush()) {
        failed.increment(1);
        tracing::warn!(error = %e, "cannot write the access log");
    }
    buf.clear();
}

// === formats ===

/// The names an entry's indexes stand for.
struct Names<'a> {
    route: Option<&'a tandem_core::Route>,
    pool: &'a str,
    backend: &'a str,
}

fn names(p: &Pending) -> Names<'_> {
    let Some(table) = &p.table else {
        return Names {
            route: None,
            pool: "",
            backend: "",
        };
    };
    let pool = p.pool.and_then(|i| table.pools.get(i));
    let path = std::str::from_utf8(&p.target).unwrap_or("/");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let host = p
        .host
        .as_deref()
        .and_then(|h| std::str::from_utf8(h).ok())
        .unwrap_or("");
    Names {
        route: pool.and_then(|_| crate::explain::route_taken(table, host, path)),
        pool: pool.map_or("", |p| p.config.name.as_str()),
        backend: pool
            .zip(p.backend)
            .and_then(|(pool, i)| pool.backends.get(i))
            .map_or("", |b| b.declared.address.as_str()),
    }
}

fn text(b: &Option<Bytes>) -> &str {
    b.as_deref()
        .and_then(|h| std::str::from_utf8(h).ok())
        .unwrap_or("")
}

fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

fn json_line(buf: &mut Vec<u8>, e: &Entry) {
    let p = &e.pending;
    let n = names(p);
    // Fields in a fixed order, as a person reads a line; strings through
    // serde_json, so whatever a client sent is escaped.
    let string = |buf: &mut Vec<u8>, key: &str, value: Option<&str>| {
        let _ = write!(buf, ",\"{key}\":");
        match value {
            Some(v) => {
                let _ = serde_json::to_writer(&mut *buf, v);
            }
            None => buf.extend_from_slice(b"null"),
        }
    };
    let _ = write!(buf, "{{\"time\":\"{}\"", rfc3339(p.at));
    string(buf, "client", Some(&p.client.to_string()));
    string(buf, "method", Some(p.method.as_str()));
    string(buf, "host", Some(text(&p.host)));
    string(buf, "path", Some(&String::from_utf8_lossy(&p.target)));
    string(buf, "protocol", Some(version(p.version)));
    let _ = write!(
        buf,
        ",\"status\":{},\"bytes\":{},\"duration_ms\":{},\"head_ms\":{}",
        p.status,
        e.bytes,
        ms(e.duration),
        ms(p.head_after)
    );
    let route = n.route.map(|r| format!("{} {}", r.host, r.path_prefix));
    string(buf, "route", route.as_deref());
    string(buf, "pool", (!n.pool.is_empty()).then_some(n.pool));
    string(buf, "backend", (!n.backend.is_empty()).then_some(n.backend));
    let _ = write!(buf, ",\"tries\":{}", p.tries);
    let trace = p.trace_id.map(|t| format!("{t:032x}"));
    string(buf, "trace_id", trace.as_deref());
    buf.extend_from_slice(b"}\n");
}

fn common_line(buf: &mut Vec<u8>, e: &Entry) {
    let p = &e.pending;
    let n = names(p);
    // Values from the request are quoted with `"` and `\` escaped, so a
    // line always splits the same way.
    let quoted = |s: &str| {
        let mut q = String::with_capacity(s.len() + 2);
        q.push('"');
        for c in s.chars() {
            match c {
                '"' | '\\' => {
                    q.push('\\');
                    q.push(c);
                }
                c if c.is_control() => q.push_str(&format!("\\x{:02x}", c as u32)),
                c => q.push(c),
            }
        }
        q.push('"');
        q
    };
    let request = format!(
        "{} {} {}",
        p.method,
        String::from_utf8_lossy(&p.target),
        version(p.version)
    );
    let route = n
        .route
        .map_or_else(String::new, |r| format!("{} {}", r.host, r.path_prefix));
    let _ = writeln!(
        buf,
        "{} - - [{}] {} {} {} host={} route={} pool={} backend={} tries={} duration_ms={:.3} head_ms={:.3} trace_id={}",
        p.client,
        clf_time(p.at),
        quoted(&request),
        p.status,
        e.bytes,
        quoted(text(&p.host)),
        quoted(&route),
        if n.pool.is_empty() { "-" } else { n.pool },
        if n.backend.is_empty() { "-" } else { n.backend },
        p.tries,
        ms(e.duration),
        ms(p.head_after),
        p.trace_id
            .map_or_else(|| "-".to_string(), |t| format!("{t:032x}")),
    );
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/?",
    }
}

// === time, without a date library ===

/// (year, month, day, hour, minute, second, millisecond) in UTC.
fn civil(at: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3_600) as u32,
        (rem % 3_600 / 60) as u32,
        (rem % 60) as u32,
        d.subsec_millis(),
    )
}

fn rfc3339(at: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil(at);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

fn clf_time(at: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, _) = civil(at);
    format!(
        "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000",
        MONTHS[(mo - 1) as usize]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            pending: Pending {
                started: Instant::now(),
                at: UNIX_EPOCH + Duration::from_millis(1_733_474_401_123),
                client: "203.0.113.7".parse().unwrap(),
                method: Method::GET,
                version: Version::HTTP_11,
                host: Some(Bytes::from_static(b"shop.example")),
                target: Bytes::from_static(b"/a\"b?q=1"),
                status: 502,
                table: None,
                pool: None,
                backend: None,
                tries: 2,
                trace_id: Some(0xabc),
                head_after: Duration::from_micros(1_500),
            },
            bytes: 42,
            duration: Duration::from_micros(2_250),
        }
    }

    #[test]
    fn time_is_utc_civil_time() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let at = UNIX_EPOCH + Duration::from_millis(1_733_474_401_123);
        assert_eq!(rfc3339(at), "2024-12-06T08:40:01.123Z");
        assert_eq!(clf_time(at), "06/Dec/2024:08:40:01 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_json_line_has_every_field() {
        let mut buf = Vec::new();
        json_line(&mut buf, &entry());
        assert_eq!(buf.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert!(buf.starts_with(b"{\"time\":\"2024-12-06T08:40:01.123Z\",\"client\""));
        assert_eq!(v["time"], "2024-12-06T08:40:01.123Z");
        assert_eq!(v["client"], "203.0.113.7");
        assert_eq!(v["path"], "/a\"b?q=1");
        assert_eq!(
            (v["status"].as_u64(), v["bytes"].as_u64()),
            (Some(502), Some(42))
        );
        assert_eq!(v["duration_ms"].as_f64(), Some(2.25));
        assert_eq!(v["tries"], 2);
        assert_eq!(v["trace_id"], "00000000000000000000000000000abc");
        assert!(v["pool"].is_null() && v["backend"].is_null());
    }

    #[test]
    fn a_common_line_quotes_what_the_client_sent() {
        let mut buf = Vec::new();
        common_line(&mut buf, &entry());
        let line = String::from_utf8(buf).unwrap();
        assert!(
            line.starts_with(
                r#"203.0.113.7 - - [06/Dec/2024:08:40:01 +0000] "GET /a\"b?q=1 HTTP/1.1" 502 42 host="shop.example""#
            ),
            "{line}"
        );
        assert!(
            line.ends_with("trace_id=00000000000000000000000000000abc\n"),
            "{line}"
        );
    }

    #[test]
    fn a_full_queue_drops_lines_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let log = AccessLog::start(&Options {
            path: dir.path().join("access.log"),
            format: Format::Json,
            buffer: 4,
        })
        .unwrap();
        // Faster than the writer can drain: some are dropped, none waits.
        for _ in 0..10_000 {
            log.push(entry().pending, 1);
        }
        log.close();
        let text = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
        let lines = text.lines().count();
        assert!((1..10_000).contains(&lines), "{lines} lines written");
    }
}

//! The status page as HTML: plain functions from the view model to
//! strings. Every value that comes from configuration, agents or nodes goes
//! through [`esc`] (a health reason is whatever a probed backend or an agent
//! said: attacker-influenced text). Fragments rendered here are both the
//! static page and what the live stream pushes, so the two never differ.
//!
//! No inline script or style: the page's Content-Security-Policy allows
//! only the stylesheet and script served beside it.

use std::fmt::Write as _;
use std::sync::Arc;

use tandem_core::health::HealthState;
use tandem_core::lb::Tier;
use tandem_core::{AdminState, BackendRole};

use super::actions::Action;
use super::assets;
use super::view::{
    AgentLine, Alert, AlertWhat, BackendPage, BackendState, BackendView, CopyFrom, FeedEntry,
    FeedWhat, HistoryFrom, HistoryRow, MemberView, NodeView, Nodes, Overview, Platform, PoolView,
    RouteRef, SeenBy, ViewsFrom,
};

pub use tandem_telemetry::web::esc;

/// A path segment: percent-encodes everything but unreserved characters.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Where a backend's page is.
pub fn backend_href(pool: &str, address: &str) -> String {
    format!(
        "/ui/pools/{}/backends/{}",
        path_segment(pool),
        path_segment(address)
    )
}

/// `<time>` of a Unix-ms instant: the UTC clock time, which the page's
/// script turns into "12s ago" (the clock time stays in its title).
fn time(ms: u64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms as i64) else {
        return "?".into();
    };
    format!(
        r#"<time datetime="{}" data-at="{ms}">{}</time>"#,
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        t.format("%H:%M:%S")
    )
}

fn clock(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// A colour per replica name, as the shop's "served by" badge has.
fn hue(name: &str) -> u32 {
    // FNV-1a: stable across runs and builds.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % 8
}

const LOGO: &str = r##"<svg width="28" height="28" viewBox="0 0 100 100" aria-hidden="true"><rect width="100" height="100" rx="24" fill="#1f2328"/><g fill="none" stroke-width="9"><circle cx="38" cy="50" r="19" stroke="#fff"/><circle cx="62" cy="50" r="19" stroke="#d9480f"/></g></svg>"##;

const LOCK: &str = r##"<svg width="16" height="16" viewBox="0 0 16 16" aria-hidden="true"><rect x="3" y="7" width="10" height="7" rx="1.5" fill="#656d76"/><path d="M5 7V5a3 3 0 0 1 6 0v2" fill="none" stroke="#656d76" stroke-width="1.6"/></svg>"##;

// === the frame ===

/// A whole page: the bar naming the replica that answers, the read-only
/// notice, `content`, the footer. `events` is the live stream's path.
pub fn page(
    title: &str,
    replica: &str,
    now_ms: u64,
    events: &str,
    viewer: &Viewer,
    content: &str,
) -> String {
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Tandem</title>
<link rel="icon" href="{icon}" type="image/svg+xml">
<link rel="stylesheet" href="{css}">
<script src="{js}" defer></script>
</head>
<body data-events="{events}" data-now="{now_ms}">
<a class="skip" href="#main">Skip to the content</a>
<header class="top"><div class="bar">
<a class="logo" href="/ui/">{LOGO}Tandem <small>status</small></a>
<nav aria-label="Sections"><a href="/ui/#platform">Platform</a><a href="/ui/#pools">Pools</a><a href="/ui/#nodes">Proxies &amp; agents</a><a href="/ui/#feed">Changes</a></nav>
<div class="right">
<span class="pill hue-{hue}" id="answered-by" title="The control replica that answers this page"><span class="dot"></span><span>answered by <strong>{replica}</strong></span></span>
{live}
</div>
</div></header>
<main id="main">
{notice}
{content}
</main>
<footer><div class="bar">
<span>Every control replica serves this page on its admin listener (<code>/ui/</code>) from what it holds in memory; it follows changes as they commit. Also here: <a href="/metrics">/metrics</a> · <a href="/readyz">/readyz</a> · <a href="/healthz">/healthz</a></span>
</div></footer>
</body>
</html>
"##,
        title = esc(title),
        icon = assets::ICON.href(),
        css = assets::CSS.href(),
        js = assets::JS.href(),
        events = esc(events),
        hue = hue(replica),
        replica = esc(replica),
        notice = notice(viewer),
        // Pages that follow nothing say nothing of being live.
        live = if events.is_empty() {
            String::new()
        } else {
            format!(
                r#"<span class="pill" id="live" role="status" data-state="static">Static view · {}</span>"#,
                clock(now_ms)
            )
        },
    )
}

// === the overview ===

pub fn overview(o: &Overview, feed: &[Arc<FeedEntry>], viewer: &Viewer) -> String {
    let pools_count = o.pools.len();
    let backends: usize = o.pools.iter().map(|p| p.backends.len()).sum();
    let body = format!(
        r#"<div id="alerts-body" aria-live="assertive">{alerts}</div>
<section class="block" id="platform" aria-labelledby="platform-h">
<h2 id="platform-h">Platform</h2>
<div id="platform-body">{platform}</div>
</section>
<div class="columns">
<div>
<section class="block" id="pools" aria-labelledby="pools-h">
<h2 id="pools-h">Pools <span class="sub">{pools_count} pools, {backends} backends</span></h2>
<div id="pools-body">{pools}</div>
</section>
<section class="block" id="nodes" aria-labelledby="nodes-h">
<h2 id="nodes-h">Proxies and agents</h2>
<div id="nodes-body">{nodes}</div>
</section>
</div>
<section class="block" id="feed" aria-labelledby="feed-h">
<h2 id="feed-h">Changes <span class="sub">configuration and health, newest first</span></h2>
<div class="panel"><ol class="feed" id="feed-list" role="log" aria-label="Configuration changes and health transitions, newest first" data-max="{feed_max}">{feed}</ol></div>
</section>
</div>"#,
        alerts = alerts(&super::view::alerts(&o.pools, &o.nodes)),
        platform = platform(&o.platform),
        pools = pools(&o.pools, &o.agents_from),
        nodes = nodes(&o.nodes),
        feed = feed_items(feed),
        feed_max = super::live::FEED_LEN,
    );
    page(
        &format!("Status of {}", o.platform.replica),
        &o.platform.replica,
        o.platform.now_ms,
        "/ui/events",
        viewer,
        &body,
    )
}

// === alerts ===

/// What an operator must look at now, above everything else: nothing at
/// all when there is nothing.
pub fn alerts(alerts: &[Alert]) -> String {
    if alerts.is_empty() {
        return String::new();
    }
    let mut items = String::new();
    for a in alerts {
        let what = match &a.what {
            AlertWhat::Node(text) => esc(text),
            AlertWhat::NotBound {
                listen,
                pool,
                error,
            } => format!(
                r#"TCP listener <span class="mono">{}</span> (pool {}) <strong>NOT BOUND</strong>: {}. That route takes no connections on this proxy."#,
                esc(listen),
                esc(pool),
                esc(error)
            ),
            AlertWhat::SplitBrain { pool, members } => format!(
                "Pool <strong>{}</strong> (single_active): {} members pass the health check ({}). Proxies send only to {}, the first by declared order. Two primaries at once: check for a split brain.",
                esc(pool),
                members.len(),
                esc(&members.join(", ")),
                esc(members.first().map(String::as_str).unwrap_or_default()),
            ),
        };
        let stale = if a.stale {
            r#" <span class="meta">(as last reported: it may be over)</span>"#
        } else {
            ""
        };
        let _ = write!(
            items,
            r#"<li data-alert-from="{from}"><strong>{from}</strong>: {what}{stale}</li>"#,
            from = esc(&a.from),
        );
    }
    format!(
        r#"<section class="alert" id="alerts" aria-labelledby="alerts-h"><h2 id="alerts-h"><span aria-hidden="true">⚠</span> ALERT{plural}</h2><ul>{items}</ul></section>"#,
        plural = if alerts.len() == 1 { "" } else { "S" },
    )
}

// === the platform ===

pub fn platform(p: &Platform) -> String {
    let mut out = String::new();
    let copy = match &p.copy {
        CopyFrom::Database => "from the database".to_string(),
        CopyFrom::Peer(name) => format!("copied from {}", esc(name)),
        CopyFrom::Nothing => "no copy yet: nothing to answer from".to_string(),
    };
    let db = &p.database;
    let (db_class, db_big, db_line) = if db.up {
        (
            "ok",
            r#"<span class="state ok"><span class="sym" aria-hidden="true">✓</span>reachable</span>"#
                .to_string(),
            format!("{} · since {}", esc(&db.name), time(db.since_ms)),
        )
    } else {
        let since = if db.ever_up {
            format!("down since {}", time(db.since_ms))
        } else {
            format!(
                "not reached since this replica started {}",
                time(db.since_ms)
            )
        };
        (
            "bad",
            r#"<span class="state bad"><span class="sym" aria-hidden="true">✕</span>UNREACHABLE</span>"#
                .to_string(),
            format!(
                "{} · {since}: {} · config writes fail; reads and Watch are served from memory; health keeps flowing",
                esc(&db.name),
                esc(&db.cause)
            ),
        )
    };
    let r = &p.raft;
    let leader = if r.leader == 0 {
        r#"<span class="state bad"><span class="sym" aria-hidden="true">✕</span>no leader</span>"#
            .to_string()
    } else {
        format!("control-{}", r.leader)
    };
    let raft_class = if r.leader == 0 { "bad" } else { "" };
    let _ = write!(
        out,
        r#"<div class="cards">
<div class="card"><h3>Configuration</h3><p class="big" id="revision">revision {revision}</p><p class="meta">{copy}</p></div>
<div class="card {db_class}" id="database"><h3>Control database</h3><p class="big">{db_big}</p><p class="meta">{db_line}</p></div>
<div class="card {raft_class}"><h3>Raft leader</h3><p class="big" id="leader">{leader}</p><p class="meta">term {term}</p></div>
<div class="card"><h3>This replica</h3><p class="big">{replica}</p><p class="meta">{role} · commit {commit} · applied {applied}</p></div>
</div>"#,
        revision = p.revision,
        term = r.term,
        replica = esc(&p.replica),
        role = esc(&r.role),
        commit = r.commit,
        applied = r.applied,
    );
    let seen = match &r.seen_by {
        SeenBy::ThisLeader => "as this replica, the leader, sees them".to_string(),
        SeenBy::Leader(name) => format!("as the leader, {}, sees them", esc(name)),
        SeenBy::ThisFollower => {
            "as this follower sees them: the leader did not answer, so only this replica and the leader are known".to_string()
        }
    };
    let mut rows = String::new();
    for m in &r.members {
        rows.push_str(&member_row(m));
    }
    let _ = write!(
        out,
        r#"<div class="panel scroll"><table id="members">
<caption>Raft members, {seen}</caption>
<thead><tr><th scope="col">Member</th><th scope="col">Address</th><th scope="col">Role</th><th scope="col">Reachable</th><th scope="col" class="num">Lag</th><th scope="col">Replication</th></tr></thead>
<tbody>{rows}</tbody>
</table></div>"#
    );
    out
}

fn member_row(m: &MemberView) -> String {
    let reachable = match (m.reachable, m.last_heard_ms) {
        (Some(true), _) => {
            r#"<span class="state ok"><span class="sym" aria-hidden="true">✓</span>yes</span>"#
                .to_string()
        }
        (Some(false), Some(ms)) => format!(
            r#"<span class="state bad"><span class="sym" aria-hidden="true">✕</span>NO</span> <span class="meta">last heard {} ago</span>"#,
            crate::database::format_duration(std::time::Duration::from_millis(ms))
        ),
        (Some(false), None) => {
            r#"<span class="state bad"><span class="sym" aria-hidden="true">✕</span>NO</span> <span class="meta">not heard since this replica started</span>"#
                .to_string()
        }
        (None, _) => r#"<span class="meta">not known here</span>"#.to_string(),
    };
    let role = match m.role.as_str() {
        "leader" => r#"<span class="state info">leader</span>"#.to_string(),
        other => esc(other),
    };
    let me = if m.is_self {
        r#" <span class="tag">this replica</span>"#
    } else {
        ""
    };
    format!(
        r#"<tr data-member="{id}"><td>control-{id}{me}</td><td class="addr">{addr}</td><td>{role}</td><td>{reachable}</td><td class="num">{lag}</td><td>{progress}</td></tr>"#,
        id = m.id,
        addr = esc(&m.address),
        lag = m.lag.map(|l| l.to_string()).unwrap_or_else(|| "—".into()),
        progress = if m.progress.is_empty() {
            "—".to_string()
        } else {
            esc(&m.progress)
        },
    )
}

// === pools ===

pub fn pools(pools: &[PoolView], from: &ViewsFrom) -> String {
    if pools.is_empty() {
        return r#"<div class="panel"><p>No pools yet. Create one with <code>tandemctl pool create NAME</code>.</p></div>"#.into();
    }
    let mut out = String::new();
    for p in pools {
        out.push_str(&pool(p));
    }
    let agents = match from {
        ViewsFrom::Live { .. } => "Agents: each agent's latest report (this replica is the raft leader and decides health).".to_string(),
        ViewsFrom::Decisions { leader: Some(l) } => format!(
            "Agents: what each agent reported when the backend's current state was decided; the latest reports are held by the raft leader, {} (its page shows them).",
            esc(l)
        ),
        ViewsFrom::Decisions { leader: None } => "Agents: what each agent reported when the backend's current state was decided (no raft leader now).".to_string(),
    };
    let _ = write!(
        out,
        r#"<p class="note">{agents} “In rotation” applies the balancer's rules to the committed health and the declared state; a proxy may also eject a backend locally. Traffic is what each proxy reported of its last few seconds (requests/s, errors: 5xx answers and failed tries, p99 time to the answer's head, to the bucket bound), with its local ejections.</p>"#
    );
    out
}

fn tier_line(p: &PoolView) -> String {
    if p.single_active() {
        let active = p
            .backends
            .iter()
            .find(|b| b.in_rotation)
            .map(|b| esc(&b.address))
            .unwrap_or_default();
        let split = if p.claimants.len() > 1 {
            format!(
                r#" <span class="tier panic">⚠ SPLIT BRAIN? {} members pass the check</span>"#,
                p.claimants.len()
            )
        } else {
            String::new()
        };
        let tier = match p.tier {
            Some(Tier::Backups) => format!(
                r#"<span class="tier panic">⚠ no primary passes its check: every connection to backup <span class="mono">{active}</span></span>"#
            ),
            Some(_) => format!(
                r#"<span class="tier">every connection to <span class="mono">{active}</span>, the first member passing its check</span>"#
            ),
            None => r#"<span class="tier none">✕ no member passes its check: no backend can take traffic</span>"#.into(),
        };
        return tier + &split;
    }
    match p.tier {
        Some(Tier::Primaries) => r#"<span class="tier">traffic to healthy primaries</span>"#.into(),
        Some(Tier::PanicPrimaries) => format!(
            r#"<span class="tier panic">⚠ PANIC: fewer than {}% of primaries healthy, spread over every enabled primary</span>"#,
            p.panic_threshold_percent
        ),
        Some(Tier::Backups) => {
            r#"<span class="tier panic">⚠ no primary usable: traffic to backups</span>"#.into()
        }
        Some(Tier::PanicAll) => {
            r#"<span class="tier panic">⚠ PANIC: nothing healthy, spread over every enabled backend</span>"#.into()
        }
        None => r#"<span class="tier none">✕ no backend can take traffic</span>"#.into(),
    }
}

fn route(r: &RouteRef) -> String {
    match r {
        RouteRef::Http { host, path_prefix } => format!(
            r#"<li title="HTTP route: host {host}, path prefix {prefix}"><span class="visually-hidden">HTTP route </span>{host}{prefix}</li>"#,
            host = esc(host),
            prefix = esc(path_prefix),
        ),
        RouteRef::Tcp { listen } => format!(
            r#"<li data-tcp-route="{listen}" title="TCP route: connections to {listen} on every proxy"><span class="visually-hidden">TCP route </span>tcp {listen}</li>"#,
            listen = esc(listen),
        ),
    }
}

fn pool(p: &PoolView) -> String {
    let in_rotation = p.backends.iter().filter(|b| b.in_rotation).count();
    let routes = if p.routes.is_empty() {
        r#"<span class="meta">no route reaches it</span>"#.to_string()
    } else {
        let items: String = p.routes.iter().map(route).collect();
        format!(r#"<ul class="routes" aria-label="Routes to this pool">{items}</ul>"#)
    };
    let mut rows = String::new();
    for b in &p.backends {
        rows.push_str(&backend_row(b, p.single_active()));
    }
    let tcp = p
        .tcp
        .as_ref()
        .map(|t| {
            format!(
                r#"<span class="tcp" title="How its TCP routes treat connections">TCP: {}</span>"#,
                esc(t)
            )
        })
        .unwrap_or_default();
    if p.backends.is_empty() {
        rows.push_str(r#"<tr><td colspan="6" class="meta">No backends. Add one with <code>tandemctl backend add POOL HOST:PORT</code>.</td></tr>"#);
    }
    format!(
        r#"<article class="pool" id="pool-{id}" data-pool="{name}" aria-labelledby="pool-{id}-h">
<header>
<h3 id="pool-{id}-h">{name}</h3>
<div class="facts"><span>policy <strong>{policy}</strong></span><span><strong>{in_rotation}/{total}</strong> in rotation</span><span>changed at revision {revision}</span></div>
{tier}
</header>
<header><div class="facts"><span>routes</span>{routes}<span class="check" title="How the agents probe its backends">{check}</span>{tcp}</div></header>
<div class="scroll"><table>
<caption class="visually-hidden">Backends of pool {name}</caption>
<thead><tr><th scope="col">Backend</th><th scope="col">State</th><th scope="col">Why</th><th scope="col" class="num">Weight</th><th scope="col">Role</th><th scope="col">Traffic</th></tr></thead>
<tbody>{rows}</tbody>
</table></div>
</article>"#,
        id = esc(&p.name),
        name = esc(&p.name),
        policy = esc(p.policy),
        total = p.backends.len(),
        revision = p.revision,
        tier = tier_line(p),
        check = esc(&p.health_check),
    )
}

/// A backend's health as a symbol and a word.
pub fn health_state(s: HealthState) -> &'static str {
    match s {
        HealthState::Healthy => {
            r#"<span class="state ok" data-health="healthy"><span class="sym" aria-hidden="true">✓</span>healthy</span>"#
        }
        HealthState::Unhealthy => {
            r#"<span class="state bad" data-health="unhealthy"><span class="sym" aria-hidden="true">✕</span>unhealthy</span>"#
        }
        HealthState::Unknown => {
            r#"<span class="state" data-health="unknown"><span class="sym" aria-hidden="true">?</span>unknown</span>"#
        }
    }
}

fn admin_state(s: AdminState) -> &'static str {
    match s {
        AdminState::Enabled => "",
        AdminState::Draining => {
            r#"<span class="state warn"><span class="sym" aria-hidden="true">◐</span>draining</span>"#
        }
        AdminState::Disabled => {
            r#"<span class="state warn"><span class="sym" aria-hidden="true">⊘</span>disabled</span>"#
        }
    }
}

fn rotation(b: &BackendView) -> &'static str {
    if b.in_rotation {
        r#"<span class="tag" title="New requests go to it">● in rotation</span>"#
    } else if b.role == BackendRole::Backup
        && b.admin == AdminState::Enabled
        && b.health.is_usable()
    {
        r#"<span class="tag" title="A backup: it takes traffic when no primary is usable">○ standby</span>"#
    } else {
        r#"<span class="tag" title="No new requests go to it">○ out of rotation</span>"#
    }
}

/// Each agent's opinion: a symbol, its name and zone, and what it saw
/// unless that is what the reason already says ("HTTP 200 from 2/2
/// agents"), so a dissenting or silent agent stands out.
fn agent_lines(agents: &[AgentLine], reason: &str) -> String {
    if agents.is_empty() {
        return String::new();
    }
    let mut out = String::from(r#"<ul class="agents">"#);
    for a in agents {
        let (class, sym, word) = match a.verdict {
            Some(true) => ("v-ok", "✓", "up"),
            Some(false) => ("v-bad", "✕", "down"),
            None => ("v-none", "…", "undecided"),
        };
        let voting = if a.live { "" } else { " (silent: not voting)" };
        let zone = if a.zone.is_empty() {
            String::new()
        } else {
            format!(" ({})", esc(&a.zone))
        };
        let said = reason.starts_with(&format!("{} from ", a.detail));
        let detail = if said && a.live {
            String::new()
        } else {
            format!(": {}", esc(&a.detail))
        };
        let _ = write!(
            out,
            r#"<li><span class="{class}" aria-hidden="true">{sym}</span><span><span class="visually-hidden">{word}: </span>{agent}{zone}{detail}{voting}</span></li>"#,
            agent = esc(&a.agent),
        );
    }
    out.push_str("</ul>");
    out
}

fn backend_row(b: &BackendView, ordered: bool) -> String {
    let mut class = Vec::new();
    if b.health == HealthState::Unhealthy {
        class.push("unhealthy");
    }
    if !b.in_rotation {
        class.push("out");
    }
    let why = if b.since_ms.is_none() {
        r#"<span class="meta">no agent has decided yet</span>"#.to_string()
    } else {
        format!(
            r#"<span class="reason">{}</span> <span class="meta">· since {}</span>"#,
            esc(&b.reason),
            time(b.since_ms.unwrap_or_default())
        )
    };
    let role = match b.role {
        BackendRole::Primary => "primary",
        BackendRole::Backup => r#"<span class="tag">backup</span>"#,
    };
    // A `single_active` pool goes by the declared order.
    let role = if ordered {
        format!(
            r#"{role} <span class="meta" title="Its place in the declared order: the first usable member takes every connection">order {}</span>"#,
            b.order
        )
    } else {
        role.to_string()
    };
    format!(
        r#"<tr class="{class}" data-backend="{pool}/{addr}" data-health="{health}" data-admin="{admin}">
<td class="addr"><a href="{href}">{addr}</a></td>
<td><div class="states">{state}{admin_badge}</div><div>{rotation}</div></td>
<td class="why">{why}{agents}</td>
<td class="num">{weight}</td>
<td>{role}</td>
<td>{traffic}</td>
</tr>"#,
        class = class.join(" "),
        pool = esc(&b.pool),
        addr = esc(&b.address),
        health = b.health.as_str(),
        admin = b.admin.as_str(),
        href = esc(&backend_href(&b.pool, &b.address)),
        state = health_state(b.health),
        admin_badge = admin_state(b.admin),
        rotation = rotation(b),
        agents = agent_lines(&b.agents, &b.reason),
        weight = b.weight,
        traffic = traffic(b),
    )
}

/// Traffic figures, when proxies report them; never made up.
fn traffic(b: &BackendView) -> String {
    match &b.proxies {
        None => r#"<span class="meta" title="No proxy reports traffic figures to the control plane now">not reported</span>"#.into(),
        Some(proxies) if proxies.is_empty() => r#"<span class="meta">no proxy sends it traffic</span>"#.into(),
        Some(proxies) => {
            let mut out = String::from(r#"<ul class="agents">"#);
            for p in proxies {
                let ejected = p
                    .ejected_until_ms
                    .map(|t| format!(" · ejected until {}", time(t)))
                    .unwrap_or_default();
                let p99 = p
                    .p99_ms
                    .map_or_else(|| "no answers".to_string(), |v| format!("p99 ≤ {v} ms"));
                let _ = write!(
                    out,
                    r#"<li data-proxy="{}">{}: {:.1} req/s, {:.2} err/s, {p99}{ejected}</li>"#,
                    esc(&p.proxy),
                    esc(&p.proxy),
                    p.requests_per_s,
                    p.errors_per_s,
                );
            }
            out.push_str("</ul>");
            out
        }
    }
}

// === proxies and agents ===

pub fn nodes(n: &Nodes) -> String {
    match n {
        Nodes::Known { nodes } => nodes_table(nodes, None),
        Nodes::Unknown { why, last: None } => format!(
            r#"<div class="alert warn"><p>Unknown while the database cannot be read ({}): proxies and agents report there.</p></div>"#,
            esc(why)
        ),
        Nodes::Unknown {
            why,
            last: Some((nodes, at)),
        } => nodes_table(
            nodes,
            Some(format!(
                "As last read {}: the database cannot be read now ({}), and proxies' and agents' reports go there.",
                time(*at),
                esc(why)
            )),
        ),
    }
}

fn nodes_table(nodes: &[NodeView], note: Option<String>) -> String {
    if nodes.is_empty() {
        return r#"<div class="panel"><p class="meta">No proxy or agent has reported yet.</p></div>"#.into();
    }
    let mut rows = String::new();
    for n in nodes {
        rows.push_str(&node_row(n, note.is_some()));
    }
    let stale: Vec<&str> = nodes
        .iter()
        .filter(|n| n.stale)
        .map(|n| n.node_id.as_str())
        .collect();
    let stale_note = if stale.is_empty() || note.is_some() {
        String::new()
    } else {
        format!(
            r#"<p class="note"><strong>STALE</strong>: {} sent no report for over {} s (nodes report every {} s): down, or cut off from the control plane (a proxy keeps serving its last configuration, from memory or its disk).</p>"#,
            esc(&stale.join(", ")),
            tandem_proto::NODE_STALE_AFTER.as_secs(),
            tandem_proto::REPORT_APPLIED_EVERY.as_secs()
        )
    };
    let alert = note
        .map(|n| format!(r#"<div class="alert warn"><p>{n}</p></div>"#))
        .unwrap_or_default();
    format!(
        r#"{alert}<div class="panel scroll"><table id="nodes-table">
<caption class="visually-hidden">Proxies and agents, as they last reported</caption>
<thead><tr><th scope="col">Node</th><th scope="col">Zone</th><th scope="col" class="num">Applied</th><th scope="col">Serving</th><th scope="col">Last seen</th><th scope="col">Listeners</th></tr></thead>
<tbody>{rows}</tbody>
</table>{stale_note}</div>"#
    )
}

fn node_row(n: &NodeView, frozen: bool) -> String {
    let lag = if n.lag == 0 {
        r#"<span class="meta">up to date</span>"#.to_string()
    } else {
        format!(r#"<span class="state warn">{} behind</span>"#, n.lag)
    };
    let serving = if n.stale && !frozen {
        r#"<span class="state bad"><span class="sym" aria-hidden="true">✕</span>STALE</span> <span class="meta">not reporting</span>"#.to_string()
    } else {
        format!(
            r#"<span class="state ok"><span class="sym" aria-hidden="true">✓</span>live</span> <span class="meta">via {}</span><div class="meta">{}</div>"#,
            esc(&n.replica),
            esc(&n.detail)
        )
    };
    let listeners = if n.listeners.is_empty() {
        r#"<span class="meta">none reported</span>"#.to_string()
    } else {
        let mut out = String::from(r#"<ul class="listeners">"#);
        for l in &n.listeners {
            let state = if l.bound {
                r#"<span class="state ok"><span class="sym" aria-hidden="true">✓</span>bound</span>"#.to_string()
            } else {
                format!(
                    r#"<span class="state bad"><span class="sym" aria-hidden="true">✕</span>NOT BOUND</span> <span class="why">{}</span>"#,
                    esc(&l.error)
                )
            };
            let pool = if l.pool.is_empty() {
                String::new()
            } else {
                format!(" → {}", esc(&l.pool))
            };
            let _ = write!(
                out,
                r#"<li data-listen="{listen}" data-bound="{bound}"><span class="mono">{listen}</span>{pool} {state}</li>"#,
                listen = esc(&l.listen),
                bound = l.bound,
            );
        }
        out.push_str("</ul>");
        out
    };
    let alerts: String = n
        .alerts
        .iter()
        .map(|a| {
            format!(
                r#"<div class="node-alert"><span class="state bad"><span class="sym" aria-hidden="true">⚠</span>ALERT</span> {}</div>"#,
                esc(a)
            )
        })
        .collect();
    format!(
        r#"<tr class="{class}" data-node="{id}" data-stale="{stale}"><td><strong>{id}</strong> <span class="tag">{kind}</span></td><td>{zone}</td><td class="num">{applied}<div>{lag}</div></td><td>{serving}{alerts}</td><td>{seen}</td><td>{listeners}</td></tr>"#,
        class = if n.stale && !frozen { "stale" } else { "" },
        id = esc(&n.node_id),
        stale = n.stale,
        kind = esc(&n.kind),
        zone = if n.zone.is_empty() {
            "—".to_string()
        } else {
            esc(&n.zone)
        },
        applied = n.applied,
        seen = time(n.last_seen_ms),
    )
}

// === the feed ===

pub fn feed_items(entries: &[Arc<FeedEntry>]) -> String {
    if entries.is_empty() {
        return r#"<li class="empty">Nothing yet: configuration changes and health transitions appear here as they commit.</li>"#.into();
    }
    entries.iter().map(|e| feed_item(e)).collect()
}

pub fn feed_item(e: &FeedEntry) -> String {
    let (kind, what) = match &e.what {
        FeedWhat::Config {
            revision,
            kind,
            fields,
        } => {
            let mut kv = String::new();
            for (k, v) in fields {
                let _ = write!(kv, " {}=<b>{}</b>", esc(k), esc(v));
            }
            (
                r#"<span class="state info">config</span>"#.to_string(),
                format!(
                    r#"<strong>{}</strong> <span class="kv">revision=<b>{revision}</b>{kv}</span>"#,
                    esc(kind)
                ),
            )
        }
        FeedWhat::Health {
            pool,
            address,
            from,
            to,
            reason,
            ..
        } => (
            match to {
                HealthState::Healthy => r#"<span class="state ok">health</span>"#,
                HealthState::Unhealthy => r#"<span class="state bad">health</span>"#,
                HealthState::Unknown => r#"<span class="state">health</span>"#,
            }
            .to_string(),
            format!(
                r#"<a class="mono" href="{href}">{pool} {address}</a> <span class="move">{from}<span class="arrow" aria-hidden="true">→</span><span class="visually-hidden"> to </span>{to}</span> <span class="reason">{reason}</span>"#,
                href = esc(&backend_href(pool, address)),
                pool = esc(pool),
                address = esc(address),
                from = health_state(*from),
                to = health_state(*to),
                reason = esc(reason),
            ),
        ),
        FeedWhat::Reloaded { revision, from } => (
            r#"<span class="state info">config</span>"#.to_string(),
            format!(
                "<strong>reloaded</strong> the whole configuration at revision {revision}, {}",
                match from {
                    CopyFrom::Database => "from the database".to_string(),
                    CopyFrom::Peer(name) => format!("copied from {}", esc(name)),
                    CopyFrom::Nothing => "from nowhere".to_string(),
                }
            ),
        ),
    };
    format!(
        r#"<li data-key="s{seq}"><div class="head">{kind}<span class="when">{when}</span></div><div class="what">{what}</div></li>"#,
        seq = e.seq,
        when = time(e.at_ms),
    )
}

// === a backend's page ===

pub fn backend_page(page_: &BackendPage, viewer: &Viewer) -> String {
    let b = &page_.state;
    let events = format!("{}/events", backend_href(&b.pool, &b.address));
    let content = format!(
        r#"<p class="crumbs"><a href="/ui/">Status</a> / <a href="/ui/#pool-{pool}">{pool}</a> / <span class="mono">{addr}</span></p>
<div id="backend-body">{body}</div>
{actions}<section class="block" id="history" aria-labelledby="history-h">
<h2 id="history-h">Health history <span class="sub">{from}</span></h2>
<div class="panel scroll"><table>
<caption class="visually-hidden">Health transitions of {addr} in pool {pool}, newest first</caption>
<thead><tr><th scope="col">When</th><th scope="col">Transition</th><th scope="col">Why</th><th scope="col" class="num">Raft index</th></tr></thead>
<tbody id="history-body" data-max="200">{rows}</tbody>
</table></div>
</section>"#,
        pool = esc(&b.pool),
        addr = esc(&b.address),
        body = backend_body(b),
        actions = match (viewer, &b.backend) {
            (Viewer::Admin { user, csrf }, Some(v)) =>
                actions(&b.pool, &b.address, v.admin, user, csrf),
            _ => String::new(),
        },
        from = match &page_.history_from {
            HistoryFrom::Database => "newest first, from the control database".to_string(),
            HistoryFrom::Memory { why } => format!(
                "newest first, from this replica's memory: the database cannot be read ({})",
                esc(why)
            ),
        },
        rows = history_rows(&page_.history),
    );
    page(
        &format!("{} in {}", b.address, b.pool),
        &b.replica,
        b.now_ms,
        &events,
        viewer,
        &content,
    )
}

/// The live part of a backend's page: its state, declaration and agents.
pub fn backend_body(b: &BackendState) -> String {
    let Some(v) = &b.backend else {
        return format!(
            r#"<div class="backend-head"><h1>{addr}</h1></div><div class="alert warn" id="backend-gone"><p>Pool <strong>{pool}</strong> has no backend {addr} in revision {revision} of the configuration. Its history below stays.</p></div>"#,
            addr = esc(&b.address),
            pool = esc(&b.pool),
            revision = b.revision,
        );
    };
    let why = if v.since_ms.is_none() {
        "No agent has decided on it yet.".to_string()
    } else {
        format!(
            r#"<span class="reason">{}</span> · since {}"#,
            esc(&v.reason),
            time(v.since_ms.unwrap_or_default())
        )
    };
    let agents_caption = match &b.agents_from {
        ViewsFrom::Live { .. } => {
            "each agent's latest report (this replica is the raft leader)".to_string()
        }
        ViewsFrom::Decisions { leader: Some(l) } => format!(
            "what each agent reported when the current state was decided; the raft leader, {}, holds the latest reports",
            esc(l)
        ),
        ViewsFrom::Decisions { leader: None } => {
            "what each agent reported when the current state was decided".to_string()
        }
    };
    let mut agents = String::new();
    for a in &v.agents {
        let verdict = match a.verdict {
            Some(true) => {
                r#"<span class="state ok"><span class="sym" aria-hidden="true">✓</span>up</span>"#
            }
            Some(false) => {
                r#"<span class="state bad"><span class="sym" aria-hidden="true">✕</span>down</span>"#
            }
            None => r#"<span class="state">undecided</span>"#,
        };
        let votes = if a.live {
            "yes"
        } else {
            "no: silent for three intervals"
        };
        let _ = write!(
            agents,
            r#"<tr data-agent="{agent}"><td><strong>{agent}</strong></td><td>{zone}</td><td>{verdict}</td><td class="why">{detail}</td><td>{seen}</td><td>{votes}</td></tr>"#,
            agent = esc(&a.agent),
            zone = esc(&a.zone),
            detail = esc(&a.detail),
            seen = time(a.last_seen_ms),
        );
    }
    if v.agents.is_empty() {
        agents
            .push_str(r#"<tr><td colspan="6" class="meta">No agent has reported on it.</td></tr>"#);
    }
    let role = match v.role {
        BackendRole::Primary => "primary",
        BackendRole::Backup => "backup (takes traffic only when no primary is usable)",
    };
    format!(
        r#"<div class="backend-head" data-backend="{pool}/{addr}" data-health="{health}"><h1>{addr}</h1><div class="states">{state}{admin_badge}</div>{rotation}</div>
<div class="cards">
<div class="card"><h3>Health</h3><p>{why}</p></div>
<div class="card"><h3>Declared</h3><p>weight <strong>{weight}</strong> · {role} · {admin}</p><p class="meta">pool {pool}, policy {policy}</p></div>
<div class="card"><h3>Traffic</h3><p>{traffic}</p><p class="meta">requests/s, errors (5xx answers and failed tries) and p99 time to the answer's head from each proxy over its last few seconds, and its local ejections</p></div>
</div>
<section class="block" aria-labelledby="agents-h">
<h2 id="agents-h">Agents <span class="sub">{agents_caption}</span></h2>
<div class="panel scroll"><table id="agents-table">
<caption class="visually-hidden">Each agent's view of {addr}</caption>
<thead><tr><th scope="col">Agent</th><th scope="col">Zone</th><th scope="col">Verdict</th><th scope="col">Last saw</th><th scope="col">When</th><th scope="col">Votes</th></tr></thead>
<tbody>{agents}</tbody>
</table></div>
</section>"#,
        pool = esc(&b.pool),
        addr = esc(&b.address),
        health = v.health.as_str(),
        state = health_state(v.health),
        admin_badge = admin_state(v.admin),
        rotation = rotation(v),
        weight = v.weight,
        admin = v.admin.as_str(),
        policy = esc(&b.policy),
        traffic = traffic(v),
    )
}

pub fn history_rows(rows: &[HistoryRow]) -> String {
    if rows.is_empty() {
        return r#"<tr class="empty"><td colspan="4" class="meta">No transition recorded yet.</td></tr>"#.into();
    }
    rows.iter().map(history_row).collect()
}

pub fn history_row(r: &HistoryRow) -> String {
    format!(
        r#"<tr data-key="h{index}"><td>{when}</td><td>{from} <span aria-hidden="true">→</span><span class="visually-hidden"> to </span> {to}</td><td class="why">{reason}</td><td class="num">{index}</td></tr>"#,
        index = r.raft_index,
        when = time(r.at_ms),
        from = state_word(&r.from),
        to = state_word(&r.to),
        reason = esc(&r.reason),
    )
}

/// A state recorded as text (the history table's), as a badge.
fn state_word(s: &str) -> String {
    match s {
        "healthy" => health_state(HealthState::Healthy).to_string(),
        "unhealthy" => health_state(HealthState::Unhealthy).to_string(),
        "unknown" => health_state(HealthState::Unknown).to_string(),
        other => format!(r#"<span class="state">{}</span>"#, esc(other)),
    }
}

// === small pages ===

/// `/` on the admin listener: what is here.
pub fn index(replica: &str, now_ms: u64, viewer: &Viewer) -> String {
    let content = r#"<div class="panel"><h1>Admin listener</h1>
<ul>
<li><a href="/ui/"><strong>Status page</strong></a>: the platform, pools, proxies and agents, changes as they happen</li>
<li><a href="/metrics">/metrics</a>: Prometheus text</li>
<li><a href="/readyz">/readyz</a>: ready while the control database is reachable (says what is served otherwise)</li>
<li><a href="/healthz">/healthz</a>: the process answers</li>
</ul></div>"#;
    page(
        &format!("{replica} admin"),
        replica,
        now_ms,
        "",
        viewer,
        content,
    )
}

pub fn not_found(replica: &str, now_ms: u64, what: &str, viewer: &Viewer) -> String {
    let content = format!(
        r#"<div class="panel" id="not-found"><h1>Not found</h1><p>{}</p><p><a href="/ui/">Back to the status page</a></p></div>"#,
        esc(what)
    );
    page("Not found", replica, now_ms, "", viewer, &content)
}

// === signing in and actions ===

/// Who looks at a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// Not signed in: the page only shows.
    ReadOnly,
    /// Signed in with an admin credential; every form carries `csrf`.
    Admin { user: String, csrf: String },
}

impl Viewer {
    /// Whether pages for this viewer hold forms (the CSP allows them then).
    pub fn has_forms(&self) -> bool {
        matches!(self, Viewer::Admin { .. })
    }
}

fn csrf_input(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

/// Under the bar: read-only and how to sign in, or who is signed in.
fn notice(viewer: &Viewer) -> String {
    match viewer {
        Viewer::ReadOnly => format!(
            r#"<p class="readonly" id="read-only">{LOCK}<span><strong>Read-only.</strong> This page shows the platform; change it with <code>tandemctl</code>, or <a href="/ui/signin" id="sign-in">sign in</a> with an admin credential to drain, enable or disable a backend here.</span></p>"#
        ),
        Viewer::Admin { user, csrf } => format!(
            r#"<div class="signedin" id="signed-in"><span><strong>Signed in as {user}.</strong> A backend's page (click its address) can drain, enable or disable it; each asks for confirmation.</span><form method="post" action="/ui/signout">{csrf}<button type="submit" class="button quiet" id="sign-out">Sign out</button></form></div>"#,
            user = esc(user),
            csrf = csrf_input(csrf),
        ),
    }
}

/// A form that posts `action` on a backend (`confirm`: the confirmed one).
fn action_form(pool: &str, address: &str, action: Action, csrf: &str, confirm: bool) -> String {
    let (extra, label, id) = if confirm {
        (
            r#"<input type="hidden" name="confirm" value="yes">"#,
            "Confirm",
            r#" id="confirm-button""#,
        )
    } else {
        ("", action.verb(), "")
    };
    format!(
        r#"<form method="post" action="{href}/{name}">{csrf}{extra}<button type="submit" class="button {class}" data-action="{name}"{id}>{label}</button></form>"#,
        href = backend_href(pool, address),
        name = action.name(),
        csrf = csrf_input(csrf),
        class = if action == Action::Enable {
            "go"
        } else {
            "stop"
        },
    )
}

/// A signed-in admin's actions on a backend's page.
fn actions(pool: &str, address: &str, current: AdminState, user: &str, csrf: &str) -> String {
    let forms: String = Action::ALL
        .iter()
        .filter(|a| a.state() != current)
        .map(|a| action_form(pool, address, *a, csrf, false))
        .collect();
    format!(
        r#"<section class="block" id="actions" aria-labelledby="actions-h">
<h2 id="actions-h">Actions <span class="sub">as {user}; each asks for confirmation, then makes a new configuration revision as <code>tandemctl backend drain/enable/disable</code> does</span></h2>
<div class="panel"><div class="actions">{forms}</div>
<p class="note">Declared <strong>{current}</strong> when this page was loaded. Drain: no new requests or connections; the ones open finish. Disable: out of rotation at once. Enable: back in rotation.</p></div>
</section>
"#,
        user = esc(user),
        current = current.as_str(),
    )
}

/// What an action does, in a sentence.
fn action_effect(action: Action) -> &'static str {
    match action {
        Action::Drain => {
            "The proxies stop sending it new requests and connections; the ones open finish."
        }
        Action::Disable => "The proxies take it out of rotation at once.",
        Action::Enable => "The proxies send it traffic again (while its health check passes).",
    }
}

/// The confirmation an action asks for (a page: it works without script).
#[derive(Debug, Clone)]
pub struct Confirm<'a> {
    pub replica: &'a str,
    pub now_ms: u64,
    pub viewer: &'a Viewer,
    pub pool: &'a str,
    pub address: &'a str,
    pub action: Action,
    /// Its declared admin state now, if the replica knows the backend.
    pub current: Option<AdminState>,
}

pub fn confirm(c: &Confirm<'_>) -> String {
    let Viewer::Admin { user, csrf } = c.viewer else {
        return String::new();
    };
    let now = match c.current {
        Some(s) => format!("It is declared <strong>{}</strong> now.", s.as_str()),
        None => "This replica does not know its declared state now.".to_string(),
    };
    let content = format!(
        r#"<div class="panel confirm" id="confirm" data-action="{name}"><h1>{verb} <span class="mono">{addr}</span> in pool {pool}?</h1>
<p>{effect} {now}</p>
<p class="meta">A new revision of the configuration, which every proxy applies; this replica logs it as done by <code>ui:{user}</code>.</p>
<div class="actions">{form}<a class="button quiet" href="{back}" id="cancel">Cancel</a></div></div>"#,
        name = c.action.name(),
        verb = c.action.verb(),
        addr = esc(c.address),
        pool = esc(c.pool),
        effect = action_effect(c.action),
        form = action_form(c.pool, c.address, c.action, csrf, true),
        back = backend_href(c.pool, c.address),
        user = esc(user),
    );
    page(
        &format!("{} {}?", c.action.verb(), c.address),
        c.replica,
        c.now_ms,
        "",
        c.viewer,
        &content,
    )
}

/// What an action committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new revision of the declared configuration.
    Revision(u64),
    /// The database is down: a raft override, declared when it returns.
    Override,
}

/// The page after an action: what it did and the revision it made.
pub fn done(
    replica: &str,
    now_ms: u64,
    viewer: &Viewer,
    pool: &str,
    address: &str,
    action: Action,
    outcome: Outcome,
) -> String {
    let (revision, how) = match outcome {
        Outcome::Revision(r) => (
            r.to_string(),
            format!(r#"Configuration revision <strong id="revision">{r}</strong>."#),
        ),
        Outcome::Override => (
            "override".to_string(),
            "Committed as a runtime override: the control database is unavailable, and the change goes into the declared configuration (a new revision) when it returns.".to_string(),
        ),
    };
    let content = format!(
        r#"<div class="panel done" id="done" data-revision="{revision}" data-state="{state}"><h1><span class="mono">{addr}</span> in pool {pool} is now {state}</h1>
<p>{how}</p>
<p><a href="{back}" id="back">Back to the backend</a> · <a href="/ui/">Status</a></p></div>"#,
        state = action.state().as_str(),
        addr = esc(address),
        pool = esc(pool),
        back = backend_href(pool, address),
    );
    page(
        &format!("{address} {}", action.state().as_str()),
        replica,
        now_ms,
        "",
        viewer,
        &content,
    )
}

/// The sign-in page; `error` says why the last attempt failed.
pub fn sign_in(replica: &str, now_ms: u64, viewer: &Viewer, error: Option<&str>) -> String {
    let body = match viewer {
        Viewer::Admin { user, .. } => format!(
            r#"<p>You are signed in as <strong>{}</strong>. <a href="/ui/">Back to the status page</a></p>"#,
            esc(user)
        ),
        Viewer::ReadOnly => format!(
            r#"{error}<form method="post" action="/ui/signin" class="signin"><label for="token">Admin token</label><input type="password" id="token" name="token" autocomplete="current-password" required><button type="submit" class="button go" id="sign-in-button">Sign in</button></form>"#,
            error = error
                .map(|e| format!(
                    r#"<p class="alert" id="sign-in-error" role="alert">{}</p>"#,
                    esc(e)
                ))
                .unwrap_or_default(),
        ),
    };
    let content = format!(
        r#"<div class="panel" id="signin"><h1>Sign in</h1>
<p>With an admin credential: the control plane's admin token, as <code>tandemctl</code> uses. It is checked once and kept nowhere; this browser gets a session on this replica that ends after 30 minutes without a request, or when you sign out.</p>
{body}</div>"#
    );
    page("Sign in", replica, now_ms, "", viewer, &content)
}

/// A refusal or failure, as a page.
pub fn message(replica: &str, now_ms: u64, viewer: &Viewer, title: &str, text: &str) -> String {
    let sign_in = if viewer.has_forms() {
        ""
    } else {
        r#" · <a href="/ui/signin">Sign in</a>"#
    };
    let content = format!(
        r#"<div class="panel" id="message"><h1>{title}</h1><p>{text}</p><p><a href="/ui/">Back to the status page</a>{sign_in}</p></div>"#,
        title = esc(title),
        text = esc(text),
    );
    page(title, replica, now_ms, "", viewer, &content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_line_ends() {
        assert_eq!(
            esc("<script>alert(\"x\")</script> & 'y'\r\n"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;&#13;\n"
        );
    }

    use proptest::prelude::*;
    use tandem_core::health::HealthState;

    use super::super::view::{DatabaseView, ListenerView, ProxyTraffic, RaftView, backend_state};

    /// A page whose every value from configuration, agents or nodes is
    /// `s`, in every state that renders it.
    fn sample(s: &str) -> (Overview, Vec<Arc<FeedEntry>>, BackendPage) {
        let agent = AgentLine {
            agent: s.into(),
            zone: s.into(),
            verdict: Some(false),
            detail: s.into(),
            last_seen_ms: 1_000,
            live: false,
        };
        let backend = |health, role, admin| BackendView {
            pool: s.into(),
            address: s.into(),
            weight: 1,
            role,
            admin,
            order: 1,
            health,
            since_ms: Some(1_000),
            reason: s.into(),
            agents: vec![
                agent.clone(),
                AgentLine {
                    verdict: None,
                    ..agent.clone()
                },
            ],
            in_rotation: false,
            proxies: Some(vec![ProxyTraffic {
                proxy: s.into(),
                requests_per_s: 1.0,
                errors_per_s: 0.0,
                p99_ms: Some(2.5),
                ejected_until_ms: Some(2_000),
            }]),
        };
        let node = NodeView {
            node_id: s.into(),
            kind: s.into(),
            zone: s.into(),
            applied: 1,
            lag: 1,
            last_seen_ms: 1_000,
            stale: true,
            replica: s.into(),
            detail: s.into(),
            listeners: vec![
                ListenerView {
                    listen: s.into(),
                    pool: s.into(),
                    bound: false,
                    error: s.into(),
                },
                ListenerView {
                    listen: s.into(),
                    pool: s.into(),
                    bound: true,
                    error: String::new(),
                },
            ],
            alerts: vec![s.into()],
        };
        let overview = Overview {
            platform: Platform {
                replica: s.into(),
                now_ms: 5_000,
                revision: 3,
                copy: CopyFrom::Peer(s.into()),
                database: DatabaseView {
                    name: s.into(),
                    up: false,
                    since_ms: 1_000,
                    cause: s.into(),
                    ever_up: true,
                },
                raft: RaftView {
                    me: 1,
                    role: s.into(),
                    leader: 1,
                    term: 2,
                    commit: 3,
                    applied: 3,
                    members: vec![MemberView {
                        id: 1,
                        address: s.into(),
                        role: s.into(),
                        lag: Some(0),
                        reachable: Some(false),
                        last_heard_ms: Some(10),
                        progress: s.into(),
                        is_self: true,
                    }],
                    seen_by: SeenBy::Leader(s.into()),
                },
            },
            pools: vec![
                PoolView {
                    name: s.into(),
                    policy: "single_active",
                    health_check: s.into(),
                    panic_threshold_percent: 0,
                    routes: vec![RouteRef::Tcp { listen: s.into() }],
                    tcp: Some(s.into()),
                    backends: vec![
                        BackendView {
                            in_rotation: true,
                            ..backend(
                                HealthState::Healthy,
                                BackendRole::Primary,
                                AdminState::Enabled,
                            )
                        },
                        backend(
                            HealthState::Healthy,
                            BackendRole::Primary,
                            AdminState::Enabled,
                        ),
                    ],
                    tier: Some(Tier::Primaries),
                    claimants: vec![s.into(), s.into()],
                    revision: 2,
                },
                PoolView {
                    name: s.into(),
                    policy: "round_robin",
                    health_check: s.into(),
                    panic_threshold_percent: 50,
                    routes: vec![RouteRef::Http {
                        host: s.into(),
                        path_prefix: s.into(),
                    }],
                    tcp: None,
                    backends: vec![
                        backend(
                            HealthState::Unhealthy,
                            BackendRole::Primary,
                            AdminState::Draining,
                        ),
                        backend(
                            HealthState::Healthy,
                            BackendRole::Backup,
                            AdminState::Disabled,
                        ),
                    ],
                    tier: None,
                    claimants: Vec::new(),
                    revision: 2,
                },
            ],
            agents_from: ViewsFrom::Decisions {
                leader: Some(s.into()),
            },
            nodes: Nodes::Unknown {
                why: s.into(),
                last: Some((vec![node.clone()], 1_000)),
            },
        };
        let feed = vec![
            Arc::new(FeedEntry {
                seq: 2,
                at_ms: 1_000,
                what: FeedWhat::Health {
                    index: 4,
                    pool: s.into(),
                    address: s.into(),
                    from: HealthState::Healthy,
                    to: HealthState::Unhealthy,
                    reason: s.into(),
                },
            }),
            Arc::new(FeedEntry {
                seq: 1,
                at_ms: 1_000,
                what: FeedWhat::Config {
                    revision: 3,
                    kind: s.into(),
                    fields: vec![(s.into(), s.into())],
                },
            }),
        ];
        let page = BackendPage {
            state: backend_state(&overview, s, s),
            history: vec![HistoryRow {
                raft_index: 4,
                from: s.into(),
                to: s.into(),
                reason: s.into(),
                at_ms: 1_000,
            }],
            history_from: HistoryFrom::Memory { why: s.into() },
        };
        (overview, feed, page)
    }

    /// Every page and fragment the sample renders to.
    fn rendered(s: &str) -> Vec<String> {
        let (o, feed, page) = sample(s);
        let mut known = o.clone();
        known.nodes = Nodes::Known {
            nodes: match &o.nodes {
                Nodes::Unknown {
                    last: Some((n, _)), ..
                } => n.clone(),
                _ => vec![],
            },
        };
        let mut gone = page.state.clone();
        gone.backend = None;
        // Signed in as a user named `s`, with `s` for a CSRF token.
        let admin = Viewer::Admin {
            user: s.into(),
            csrf: s.into(),
        };
        let ro = Viewer::ReadOnly;
        let confirm_page = |action, current| {
            confirm(&Confirm {
                replica: s,
                now_ms: 1_000,
                viewer: &admin,
                pool: s,
                address: s,
                action,
                current,
            })
        };
        vec![
            overview(&o, &feed, &ro),
            alerts(&super::super::view::alerts(&o.pools, &o.nodes)),
            alerts(&super::super::view::alerts(&known.pools, &known.nodes)),
            pools(&o.pools, &o.agents_from),
            nodes(&known.nodes),
            feed_items(&feed),
            backend_page(&page, &ro),
            backend_body(&gone),
            not_found(s, 1_000, s, &ro),
            overview(&o, &feed, &admin),
            backend_page(&page, &admin),
            not_found(s, 1_000, s, &admin),
            index(s, 1_000, &admin),
            confirm_page(Action::Drain, Some(AdminState::Enabled)),
            confirm_page(Action::Enable, None),
            done(
                s,
                1_000,
                &admin,
                s,
                s,
                Action::Disable,
                Outcome::Revision(7),
            ),
            done(s, 1_000, &admin, s, s, Action::Drain, Outcome::Override),
            sign_in(s, 1_000, &ro, Some(s)),
            sign_in(s, 1_000, &admin, None),
            message(s, 1_000, &ro, s, s),
            message(s, 1_000, &admin, s, s),
        ]
    }

    fn count(haystack: &str, c: char) -> usize {
        haystack.chars().filter(|&x| x == c).count()
    }

    proptest! {
        /// Whatever a backend, an agent or a node says, the markup stays
        /// the page's own: exactly as many tags and quotes as with a
        /// harmless value, and no carriage return to end an event line.
        #[test]
        fn no_value_adds_markup(s in any::<String>()) {
            let plain = rendered("x");
            let hostile = rendered(&s);
            prop_assert!(plain[0].contains("<table"), "the sample renders tables");
            for (a, b) in plain.iter().zip(&hostile) {
                for c in ['<', '>', '"', '\''] {
                    prop_assert_eq!(count(a, c), count(b, c), "{:?} in {:?}", c, s);
                }
                prop_assert!(!b.contains('\r'));
            }
        }
    }

    #[test]
    fn markup_in_a_reason_comes_out_as_text() {
        let evil = r#"<img src=x onerror="alert(1)"></td><script>alert('x')</script>"#;
        for html in rendered(evil) {
            assert!(!html.contains("<img"), "{html}");
            assert!(!html.contains("<script>"), "{html}");
        }
        let page = &rendered(evil)[0];
        assert!(page.contains(
            "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&lt;/td&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
        ));
    }

    #[test]
    fn tcp_routes_listeners_and_alerts_are_on_the_page() {
        let page = &rendered("x")[0];
        let alerts_at = page.find(r#"id="alerts""#).expect("the alerts section");
        assert!(
            alerts_at < page.find(r#"id="platform""#).unwrap(),
            "alerts come first"
        );
        for shown in [
            // The TCP route on its pool, the pool's TCP settings, the one
            // active member and the split brain.
            r#"data-tcp-route="x""#,
            r#"<span class="tcp" title="How its TCP routes treat connections">TCP: x</span>"#,
            r#"every connection to <span class="mono">x</span>, the first member passing its check"#,
            "SPLIT BRAIN? 2 members pass the check",
            // A listener of each kind on the proxy's row.
            r#"<li data-listen="x" data-bound="true">"#,
            r#"<li data-listen="x" data-bound="false">"#,
            "NOT BOUND",
            // The alerts: the page's own, the proxy's listener and its line.
            "Proxies send only to x, the first by declared order",
            r#"TCP listener <span class="mono">x</span> (pool x) <strong>NOT BOUND</strong>: x."#,
            r#"<li data-alert-from="x"><strong>x</strong>: x <span class="meta">(as last reported: it may be over)</span></li>"#,
            "order 1",
        ] {
            assert!(page.contains(shown), "{shown:?} in\n{page}");
        }
        assert!(alerts(&[]).is_empty(), "no alert, no section");
    }

    #[test]
    fn a_backend_address_is_one_path_segment() {
        assert_eq!(
            backend_href("shop", "[::1]:8080"),
            "/ui/pools/shop/backends/%5B%3A%3A1%5D%3A8080"
        );
        assert_eq!(path_segment("a/b?c#d"), "a%2Fb%3Fc%23d");
    }
}

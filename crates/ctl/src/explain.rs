//! `tandemctl explain URL`: why a proxy sends a request where it does.
//! The question goes to a proxy through the control plane (`Explain`), or
//! straight to its admin port with `--admin`; either way the answer is the
//! proxy's JSON (`GET /explain`), printed as it is (`-o json`) or as a
//! summary and a table of the pool's backends.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::cli::{ExplainArgs, Output};
use crate::error::CtlError;
use crate::output::{Table, fields};

/// The host (with its port, which routing ignores) and the path (with
/// its query, which routing ignores too) of `url`; the scheme may be left
/// out.
pub fn split_url(url: &str) -> Result<(String, String), CtlError> {
    let bad = |why: &str| CtlError::Usage(format!("URL {url:?}: {why}"));
    let rest = match url.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            rest
        }
        Some(_) => return Err(bad("only http:// and https:// URLs")),
        None => url,
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let path = path.split('#').next().unwrap_or("/").to_string();
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains('@') {
        return Err(bad("credentials in a URL are not sent to a proxy"));
    }
    Ok((authority.to_string(), path))
}

/// Asks the proxy whose admin port is `admin` directly.
pub async fn direct(
    args: &ExplainArgs,
    admin: &str,
    token: Option<&str>,
    timeout: Duration,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    use tandem_telemetry::admin_client::{encode, get_with_token};
    let (host, path) = split_url(&args.url)?;
    let mut query = format!("/explain?host={}&path={}", encode(&host), encode(&path));
    if let Some(c) = &args.client {
        query.push_str(&format!("&client={}", encode(c)));
    }
    let (status, body) = get_with_token(admin, &query, timeout, token)
        .await
        .map_err(|e| CtlError::Unreachable {
            failures: vec![(admin.to_string(), e.to_string())],
            answered: false,
        })?;
    match status {
        200 => print(None, admin, &body, output, out),
        400 => Err(CtlError::Usage(format!(
            "the proxy refused the question: {}",
            body.trim()
        ))),
        401 => Err(CtlError::Usage(format!(
            "the proxy refused: {} (pass it with --token)",
            body.trim()
        ))),
        other => Err(CtlError::Unreachable {
            failures: vec![(admin.to_string(), format!("HTTP {other}: {}", body.trim()))],
            answered: true,
        }),
    }
}

/// Prints a proxy's answer.
pub fn print(
    proxy: Option<&str>,
    admin: &str,
    json: &str,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let v: Value = serde_json::from_str(json).map_err(|e| CtlError::Unreachable {
        failures: vec![(
            admin.to_string(),
            format!("an answer that is not JSON: {e}"),
        )],
        answered: true,
    })?;
    if output == Output::Json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        )?;
        return Ok(());
    }
    out.write_all(render(proxy, admin, &v).as_bytes())?;
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The summary and the backends' table.
pub fn render(proxy: Option<&str>, admin: &str, v: &Value) -> String {
    let asked = match proxy {
        Some(p) => format!("{p} (admin {admin})"),
        None => format!("admin {admin}"),
    };
    let req = &v["request"];
    let mut pairs = vec![
        (
            "proxy",
            format!(
                "{asked}, revision {} from the {}",
                s(&v["revision"]),
                s(&v["source"])
            ),
        ),
        (
            "request",
            format!(
                "host {}, path {}, client {}",
                s(&req["host"]),
                s(&req["path"]),
                s(&req["client"])
            ),
        ),
    ];
    let route = &v["route"];
    if route.is_null() {
        pairs.push(("route", "none matches: the proxy answers 404".into()));
    } else {
        pairs.push((
            "route",
            format!(
                "{} {} -> pool {}",
                s(&route["host"]),
                s(&route["path_prefix"]),
                s(&route["pool"])
            ),
        ));
        pairs.push(("why", s(&route["why"])));
    }
    let others: Vec<String> = v["matching_routes"]
        .as_array()
        .into_iter()
        .flatten()
        .skip(1)
        .map(|r| {
            format!(
                "{} {} -> {}",
                s(&r["host"]),
                s(&r["path_prefix"]),
                s(&r["pool"])
            )
        })
        .collect();
    if !others.is_empty() {
        pairs.push(("also matching", others.join("; ")));
    }
    let pool = &v["pool"];
    let mut text = String::new();
    if !pool.is_null() {
        let panic = if pool["panic"] == true {
            ", PANIC MODE"
        } else {
            ""
        };
        pairs.push((
            "pool",
            format!(
                "{} ({}, panic threshold {}%), serving {}{panic}",
                s(&pool["name"]),
                s(&pool["policy"]),
                s(&pool["panic_threshold_percent"]),
                s(&pool["serving"])
            ),
        ));
        pairs.push((
            "pick",
            match pool["pick"].as_str() {
                Some(b) => format!("{b}: {}", s(&pool["why"])),
                None => s(&pool["why"]),
            },
        ));
    }
    text.push_str(&fields(&pairs));
    if pool.is_null() {
        return text;
    }
    let pick = pool["pick"].as_str().unwrap_or("");
    let mut table = Table::new(&[
        "backend",
        "tier",
        "state",
        "weight",
        "in flight",
        "eligible",
        "pick",
        "why",
    ]);
    for b in pool["backends"].as_array().into_iter().flatten() {
        let address = s(&b["address"]);
        let why = match b["state"].as_str().unwrap_or("") {
            "unhealthy" => format!("agents: {}", s(&b["health_reason"])),
            "ejected" => format!(
                "ejected by this proxy for {} ms more ({} failures in a row)",
                s(&b["ejected_for_ms"]),
                s(&b["consecutive_failures"])
            ),
            "draining" => "draining: no new requests".into(),
            "disabled" => "disabled by an operator".into(),
            "unknown" => "no verdict from the agents yet (taken as usable)".into(),
            _ => String::new(),
        };
        table.row(vec![
            address.clone(),
            s(&b["tier"]),
            s(&b["state"]),
            s(&b["weight"]),
            s(&b["in_flight"]),
            if b["eligible"] == true { "yes" } else { "no" }.into(),
            if address == pick { "<-" } else { "" }.into(),
            why,
        ]);
    }
    text.push('\n');
    text.push_str(&table.render());
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_path() {
        let ok = |u: &str| split_url(u).unwrap();
        assert_eq!(
            ok("http://shop.example.com:8080/api/x?y=1"),
            ("shop.example.com:8080".into(), "/api/x?y=1".into())
        );
        assert_eq!(
            ok("shop.example.com"),
            ("shop.example.com".into(), "/".into())
        );
        assert_eq!(ok("https://a?q"), ("a".into(), "/?q".into()));
        assert_eq!(ok("a/b#frag"), ("a".into(), "/b".into()));
        for bad in ["ftp://a/", "http:///x", "http://user:pw@a/"] {
            assert!(matches!(split_url(bad), Err(CtlError::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn the_table_marks_the_pick_and_says_why_a_backend_is_out() {
        let v: Value = serde_json::from_str(
            r#"{"revision":3,"source":"control plane",
                "request":{"host":"a","path":"/","client":"0.0.0.0"},
                "route":{"host":"*","path_prefix":"/","pool":"web","why":"any host"},
                "matching_routes":[{"host":"*","path_prefix":"/","pool":"web","why":"any host"}],
                "pool":{"name":"web","policy":"round_robin","panic_threshold_percent":50,
                        "serving":"primaries","panic":false,"pick":"10.0.0.1:80","why":"next",
                        "backends":[
                          {"address":"10.0.0.1:80","tier":"primary","state":"healthy","weight":1,"in_flight":0,"eligible":true},
                          {"address":"10.0.0.2:80","tier":"primary","state":"unhealthy","health_reason":"HTTP 500 from 1/1 agents","weight":1,"in_flight":0,"eligible":false}]}}"#,
        )
        .unwrap();
        let text = render(Some("proxy-1"), "127.0.0.1:1", &v);
        assert!(text.contains("pick:"), "{text}");
        let row = |addr: &str| {
            text.lines()
                .find(|l| l.starts_with(addr))
                .unwrap()
                .to_string()
        };
        assert!(row("10.0.0.1:80").contains("<-"), "{text}");
        assert!(
            row("10.0.0.2:80").contains("agents: HTTP 500 from 1/1 agents"),
            "{text}"
        );
        assert!(!row("10.0.0.2:80").contains("<-"), "{text}");
    }
}

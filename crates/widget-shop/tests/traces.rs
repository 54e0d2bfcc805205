//! One trace across every hop: the caller's `traceparent` reaches the
//! proxy, whose span is the parent of the shop's request span, whose
//! children are the database queries. Real processes throughout: a
//! control plane, a proxy, the shop on a throwaway Postgres, and a real
//! OTLP/gRPC receiver they all export to.

mod common;

use std::time::Duration;

use common::tandem::Tandem;
use common::{Shop, shop_database};
use tandem_testkit::otlp::{Collector, Span};
use tandem_testkit::{http_client, init_crypto};

const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace_id: &str, flags: &str) -> String {
    format!("00-{trace_id}-{CALLER_SPAN}-{flags}")
}

fn of<'a>(spans: &'a [Span], service: &str, trace_id: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.service == service && s.trace_id == trace_id)
        .collect()
}

#[tokio::test]
async fn one_trace_runs_from_the_proxy_through_the_shop_to_its_queries() -> anyhow::Result<()> {
    init_crypto();
    let otlp = Collector::start().await?;

    let (_shop_pg, shop_url) = shop_database()?;
    let shop_env = otlp.env("shop");
    let shop_env: Vec<(&str, &str)> = shop_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut shop = Shop::spawn("shop-1", &shop_url, &shop_env)?;
    shop.wait_ready().await?;

    let tandem = Tandem::start_with_env(otlp.env("control")).await?;
    tandem.configure_shop_pool(&[&shop]).await?;
    // The ratio is 0: only what the caller samples (or what fails) is
    // traced.
    let mut proxy_env = otlp.env("proxy");
    proxy_env.push(("TANDEM_TRACE_SAMPLE".into(), "0".into()));
    let proxy = tandem.proxy_with("proxy-1", &proxy_env).await?;

    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let sampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client = http_client();
    for (trace_id, flags) in [(unsampled, "00"), (sampled, "01")] {
        let res = client
            .get(proxy.url("/api/widgets"))
            .header("traceparent", traceparent(trace_id, flags))
            .send()
            .await?;
        assert_eq!(res.status(), 200, "{}", res.text().await?);
    }

    let spans = otlp
        .wait_for(
            Duration::from_secs(20),
            "the proxy's, the shop's and the queries' spans of the sampled trace",
            |spans| {
                !of(spans, "proxy", sampled).is_empty()
                    && of(spans, "shop", sampled)
                        .iter()
                        .any(|s| s.name.starts_with("SELECT"))
            },
        )
        .await?;

    let proxy_spans = of(&spans, "proxy", sampled);
    assert_eq!(proxy_spans.len(), 1, "{proxy_spans:#?}");
    let p = proxy_spans[0];
    assert_eq!(
        p.parent_span_id, CALLER_SPAN,
        "the caller's span is its parent"
    );
    assert_eq!(p.kind, 2, "a server span");
    assert_eq!(p.attr("tandem.pool"), Some("shop"));
    assert_eq!(p.attr("tandem.policy"), Some("round_robin"));
    assert_eq!(
        p.attr("tandem.backend"),
        Some(shop.addr.to_string().as_str())
    );
    assert_eq!(p.attr("http.response.status_code"), Some("200"));
    assert_eq!(p.attr("tandem.panic_mode"), Some("false"));
    assert!(p.attr("tandem.upstream.first_byte_ms").is_some(), "{p:#?}");
    assert_eq!(p.events.len(), 1, "one try: {:#?}", p.events);
    assert_eq!(
        p.events[0].1.get("tandem.try.outcome").map(String::as_str),
        Some("answered 200")
    );

    let shop_spans = of(&spans, "shop", sampled);
    let request: Vec<_> = shop_spans
        .iter()
        .filter(|s| s.name == "GET /api/widgets")
        .collect();
    assert_eq!(request.len(), 1, "{shop_spans:#?}");
    let r = request[0];
    assert_eq!(
        r.parent_span_id, p.span_id,
        "the proxy's span is the shop's parent"
    );
    assert_eq!(r.kind, 2);
    let queries: Vec<_> = shop_spans
        .iter()
        .filter(|s| s.name == "SELECT widgets")
        .collect();
    assert!(!queries.is_empty(), "{shop_spans:#?}");
    for q in queries {
        assert_eq!(
            q.parent_span_id, r.span_id,
            "a query is the request's child"
        );
        assert_eq!(q.kind, 3, "a client span");
        assert_eq!(q.attr("db.system.name"), Some("postgresql"));
    }

    // The trace as README shows it (`--no-capture` prints it).
    let trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == sampled).collect();
    println!("trace {sampled}\n{}", tree(&trace, CALLER_SPAN, 0));

    // The control plane's config commits are spans under the gRPC call
    // that made them.
    let all = otlp
        .wait_for(
            Duration::from_secs(20),
            "a config commit span from the control plane",
            |spans| {
                spans
                    .iter()
                    .any(|s| s.service == "control" && s.name == "config commit")
            },
        )
        .await?;
    let commit = all
        .iter()
        .find(|s| s.service == "control" && s.name == "config commit")
        .expect("waited for above");
    assert!(commit.attr("revision").is_some(), "{commit:#?}");
    assert!(
        all.iter().any(|s| s.service == "control"
            && s.span_id == commit.parent_span_id
            && s.trace_id == commit.trace_id),
        "the commit's parent is its call's span: {commit:#?}"
    );

    // The caller's "not sampled" was honoured by the proxy and, through
    // the flags it passed on, by the shop.
    let all = otlp.spans();
    assert!(
        of(&all, "proxy", unsampled).is_empty(),
        "proxy traced an unsampled request"
    );
    assert!(
        of(&all, "shop", unsampled).is_empty(),
        "shop traced an unsampled request"
    );

    Ok(())
}

/// The spans under `parent`, indented, with a few telling attributes.
fn tree(spans: &[&Span], parent: &str, depth: usize) -> String {
    let mut out = String::new();
    for s in spans.iter().filter(|s| s.parent_span_id == parent) {
        let keys = [
            "tandem.route",
            "tandem.pool",
            "tandem.policy",
            "tandem.backend",
            "tandem.tries",
            "tandem.panic_mode",
            "tandem.upstream.connect_ms",
            "tandem.upstream.first_byte_ms",
            "http.response.status_code",
            "db.collection.name",
        ];
        let attrs: Vec<String> = keys
            .iter()
            .filter_map(|k| s.attr(k).map(|v| format!("{k}={v}")))
            .collect();
        out.push_str(&format!(
            "{}{} [{}] {} {}\n",
            "  ".repeat(depth),
            s.name,
            s.service,
            s.span_id,
            attrs.join(" ")
        ));
        out.push_str(&tree(spans, &s.span_id, depth + 1));
    }
    out
}

#[tokio::test]
async fn a_failed_request_is_traced_whatever_the_ratio_with_each_try() -> anyhow::Result<()> {
    init_crypto();
    let otlp = Collector::start().await?;
    let (_shop_pg, shop_url) = shop_database()?;
    let mut shop = Shop::spawn("shop-1", &shop_url, &[])?;
    shop.wait_ready().await?;
    // A second backend where nothing listens: connects to it fail.
    let dead = tandem_testkit::free_addr();
    let tandem = Tandem::start().await?;
    tandem
        .configure_shop_pool_at(&[shop.addr.to_string(), dead.to_string()])
        .await?;
    let mut proxy_env = otlp.env("proxy");
    proxy_env.push(("TANDEM_TRACE_SAMPLE".into(), "0".into()));
    let proxy = tandem.proxy_with("proxy-1", &proxy_env).await?;
    // Round robin: of four requests some go to the dead backend first,
    // fail to connect and are retried on the shop; the others are served
    // at the first try.
    let client = http_client();
    for _ in 0..4 {
        let res = client.get(proxy.url("/api/widgets")).send().await?;
        assert_eq!(res.status(), 200);
    }
    otlp.wait_for(
        Duration::from_secs(20),
        "a span of a retried request",
        |spans| spans.iter().any(|s| s.service == "proxy"),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spans = otlp.spans();
    let traced: Vec<_> = spans.iter().filter(|s| s.service == "proxy").collect();
    assert!(
        traced.len() < 4,
        "requests served at the first try are not traced: {traced:#?}"
    );
    for s in traced {
        assert_eq!(s.events.len(), 2, "{:#?}", s.events);
        let first = &s.events[0].1;
        assert_eq!(first.get("tandem.backend"), Some(&dead.to_string()));
        assert_eq!(
            first.get("tandem.try.outcome").map(String::as_str),
            Some("connect failed")
        );
        assert_eq!(
            first.get("tandem.try.then").map(String::as_str),
            Some("retried on another backend")
        );
        assert_eq!(
            s.attr("tandem.backend"),
            Some(shop.addr.to_string().as_str())
        );
        assert!(s.parent_span_id.is_empty(), "no caller: a root span");
    }
    Ok(())
}

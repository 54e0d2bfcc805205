//! Server-rendered pages: plain functions from domain values to HTML
//! strings, with one inline stylesheet and inline SVG drawings (no external
//! assets). Every dynamic string goes through [`esc`].

use std::fmt::Write as _;

use crate::error::Public;
use crate::model::{Cart, Order, Widget};

pub use tandem_telemetry::web::esc;

const STYLE: &str = r#"
:root{--ink:#1f2328;--muted:#656d76;--line:#e3e6ea;--bg:#f6f7f9;--accent:#d9480f;--accent-dark:#b53c0c;--ok:#2b8a3e;--bad:#c92a2a}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);background:var(--bg)}
a{color:inherit}
.top{background:#fff;border-bottom:1px solid var(--line)}
.bar{max-width:1120px;margin:0 auto;padding:12px 24px;display:flex;align-items:center;gap:20px}
.logo{display:flex;align-items:center;gap:10px;font-weight:750;font-size:20px;letter-spacing:-.01em;text-decoration:none}
.top nav{margin-left:auto;display:flex;align-items:center;gap:14px}
.top nav a{text-decoration:none;color:var(--muted);font-weight:500}
.top nav a:hover{color:var(--ink)}
.cart-link{display:inline-flex;align-items:center;gap:8px;padding:6px 14px;border-radius:999px;background:var(--ink);color:#fff!important}
.cart-link .count{background:#fff;color:var(--ink);border-radius:999px;padding:0 7px;font-size:13px;font-weight:700}
.badge{display:inline-flex;align-items:center;gap:7px;padding:4px 11px;border-radius:999px;border:1px solid var(--line);background:#f8f9fa;font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:nowrap}
.badge .dot{width:9px;height:9px;border-radius:50%;background:var(--dot)}
main{max-width:1120px;margin:0 auto;padding:28px 24px 56px}
.hero{display:flex;justify-content:space-between;align-items:flex-end;gap:24px;margin-bottom:24px}
.hero h1{margin:0 0 4px;font-size:30px;letter-spacing:-.02em}
.hero p{margin:0;color:var(--muted)}
h1{letter-spacing:-.02em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:20px}
.card{background:#fff;border:1px solid var(--line);border-radius:14px;overflow:hidden;display:flex;flex-direction:column;transition:box-shadow .15s}
.card:hover{box-shadow:0 6px 20px rgba(0,0,0,.07)}
.card .art svg,.detail .art svg{display:block;width:100%;height:auto}
.card .body{padding:14px 16px 16px;display:flex;flex-direction:column;gap:4px;flex:1}
.card h2{margin:0;font-size:17px}
.card h2 a{text-decoration:none}
.card .tagline{margin:0;color:var(--muted);font-size:14px;flex:1}
.row{display:flex;align-items:center;justify-content:space-between;gap:10px;margin-top:10px}
.price{font-weight:750;font-size:18px}
.stock{font-size:13px;color:var(--muted)}
.stock.low{color:var(--accent-dark);font-weight:600}
.stock.out{color:var(--bad);font-weight:600}
button,.button{font:inherit;font-weight:600;white-space:nowrap;border:0;border-radius:9px;padding:8px 14px;background:var(--accent);color:#fff;cursor:pointer;text-decoration:none;display:inline-block}
button:hover,.button:hover{background:var(--accent-dark)}
button:disabled{background:#adb5bd;cursor:not-allowed}
button.secondary,.button.secondary{background:#fff;color:var(--ink);border:1px solid var(--line)}
button.secondary:hover,.button.secondary:hover{background:#f1f3f5}
button.link{background:none;color:var(--muted);padding:4px 6px;font-weight:500;text-decoration:underline}
.detail{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:36px;background:#fff;border:1px solid var(--line);border-radius:16px;padding:28px}
.detail .art{border-radius:12px;overflow:hidden}
.detail h1{margin:0 0 4px;font-size:32px}
.detail .tagline{color:var(--muted);margin:0 0 16px;font-size:18px}
.detail .price{font-size:26px}
.detail form{display:flex;gap:10px;align-items:center;margin-top:18px}
input[type=number]{width:72px}
input{font:inherit;padding:7px 10px;border:1px solid #ced4da;border-radius:8px;background:#fff}
label{display:block;font-size:14px;font-weight:600;margin-bottom:4px}
.panel{background:#fff;border:1px solid var(--line);border-radius:16px;padding:24px}
.cart-layout{display:grid;grid-template-columns:minmax(0,2fr) minmax(0,1fr);gap:24px;align-items:start}
table.lines{width:100%;border-collapse:collapse}
table.lines th{text-align:left;font-size:13px;color:var(--muted);font-weight:600;border-bottom:1px solid var(--line);padding:8px}
table.lines td{border-bottom:1px solid var(--line);padding:12px 8px;vertical-align:middle}
table.lines td.num,table.lines th.num{text-align:right;white-space:nowrap}
table.lines .thumb{width:52px}
table.lines .thumb svg{width:52px;height:39px;border-radius:6px;display:block}
table.lines form{display:inline-flex;gap:6px;align-items:center;margin:0}
table.lines input[type=number]{width:62px;padding:4px 6px}
.total{display:flex;justify-content:space-between;font-size:20px;font-weight:750;margin:4px 0 18px}
.field{margin-bottom:12px}
.field input{width:100%}
.warn{color:var(--accent-dark);font-size:13px;font-weight:600}
.notice{border-radius:12px;padding:16px 20px;margin-bottom:22px;border:1px solid}
.notice.ok{background:#ebfbee;border-color:#b2f2bb}
.notice.bad{background:#fff5f5;border-color:#ffc9c9}
.notice h1{margin:0 0 4px;font-size:24px}
.notice p{margin:0}
.meta{color:var(--muted);font-size:14px}
.empty{text-align:center;padding:48px 24px}
.error{max-width:640px;margin:40px auto;text-align:center}
.error .code{font:700 56px/1 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:var(--bad);margin-bottom:8px}
.error h1{margin:0 0 10px}
.error p{color:var(--muted)}
footer{border-top:1px solid var(--line);color:var(--muted);font-size:13px}
footer .bar{padding:18px 24px;flex-wrap:wrap}
footer code{font-size:12px}
@media (max-width:760px){.detail,.cart-layout{grid-template-columns:1fr}.hero{flex-direction:column;align-items:flex-start}}
"#;

/// A colour per instance name, so a reload that lands on another server
/// is visible at a glance.
fn instance_hue(instance: &str) -> u32 {
    // FNV-1a: stable across runs and builds.
    let mut h: u32 = 0x811c_9dc5;
    for b in instance.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % 360
}

/// The "served by" badge shown on every page.
pub fn badge(instance: &str) -> String {
    format!(
        r#"<span class="badge" id="served-by" title="The shop server that rendered this page" style="--dot:hsl({} 70% 45%)"><span class="dot"></span><span>served by <strong>{}</strong></span></span>"#,
        instance_hue(instance),
        esc(instance)
    )
}

const LOGO: &str = r##"<svg width="30" height="30" viewBox="0 0 100 100" aria-hidden="true"><rect width="100" height="100" rx="24" fill="#d9480f"/><g fill="#fff"><circle cx="36" cy="50" r="17"/><circle cx="64" cy="50" r="17" fill-opacity=".75"/></g></svg>"##;

/// The page frame: header with the cart and the badge, content, footer.
/// `cart_count` is `None` when it could not be read (database down).
pub fn page(title: &str, instance: &str, cart_count: Option<i64>, content: &str) -> String {
    let count = match cart_count {
        Some(n) => format!(r#" <span class="count" id="cart-count">{n}</span>"#),
        None => String::new(),
    };
    let badge = badge(instance);
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Widget Works</title>
<style>{STYLE}</style>
</head>
<body>
<header class="top"><div class="bar">
<a class="logo" href="/">{LOGO}Widget Works</a>
<nav><a href="/">Catalogue</a><a class="cart-link" href="/cart">Cart{count}</a>{badge}</nav>
</div></header>
<main>
{content}
</main>
<footer><div class="bar">
<span>Widget Works is the sample shop of Tandem, the load-balancing platform. Every page and every response (<code>X-Served-By</code>) names the shop server that answered.</span>
<span>JSON: <code>/api/widgets</code> · <code>/api/cart</code> · <code>/api/checkout</code></span>
</div></footer>
</body>
</html>
"#,
        title = esc(title),
    )
}

// === drawings ===

/// An inline SVG of a widget: its shape in its colour on a tinted card.
pub fn art(color: &str, shape: &str) -> String {
    // Colours come from the database; only `#rrggbb` reaches the markup.
    let color = if color.len() == 7
        && color.starts_with('#')
        && color[1..].bytes().all(|b| b.is_ascii_hexdigit())
    {
        color
    } else {
        "#868e96"
    };
    let shape_svg = match shape {
        "circle" => format!(
            r##"<circle cx="80" cy="60" r="30" fill="{color}"/><circle cx="80" cy="60" r="12" fill="#fff" fill-opacity=".85"/>"##
        ),
        "square" => format!(
            r##"<rect x="50" y="30" width="60" height="60" rx="12" fill="{color}"/><rect x="66" y="46" width="28" height="28" rx="6" fill="#fff" fill-opacity=".8"/>"##
        ),
        "triangle" => format!(
            r##"<polygon points="80,24 116,90 44,90" fill="{color}" stroke="{color}" stroke-width="6" stroke-linejoin="round"/><circle cx="80" cy="68" r="9" fill="#fff" fill-opacity=".85"/>"##
        ),
        "diamond" => format!(
            r##"<polygon points="80,22 118,60 80,98 42,60" fill="{color}"/><polygon points="80,44 96,60 80,76 64,60" fill="#fff" fill-opacity=".8"/>"##
        ),
        "hexagon" => format!(
            r##"<polygon points="80,26 110,43 110,77 80,94 50,77 50,43" fill="{color}"/><circle cx="80" cy="60" r="13" fill="#fff" fill-opacity=".85"/>"##
        ),
        "star" => format!(
            r##"<polygon points="80,22 89,49 118,49 95,66 103,94 80,77 57,94 65,66 42,49 71,49" fill="{color}" stroke="{color}" stroke-width="4" stroke-linejoin="round"/>"##
        ),
        "bolt" => format!(
            r##"<polygon points="88,20 52,66 76,66 68,100 108,50 83,50" fill="{color}" stroke="{color}" stroke-width="4" stroke-linejoin="round"/>"##
        ),
        // A gear: twelve teeth around a hub.
        _ => {
            let mut teeth = String::new();
            for i in 0..12 {
                let _ = write!(
                    teeth,
                    r##"<rect x="75" y="22" width="10" height="16" rx="2" fill="{color}" transform="rotate({} 80 60)"/>"##,
                    i * 30
                );
            }
            format!(
                r##"{teeth}<circle cx="80" cy="60" r="28" fill="{color}"/><circle cx="80" cy="60" r="10" fill="#fff" fill-opacity=".9"/>"##
            )
        }
    };
    format!(
        r##"<svg viewBox="0 0 160 120" role="img" aria-hidden="true"><rect width="160" height="120" fill="{color}" fill-opacity=".12"/><ellipse cx="80" cy="104" rx="38" ry="5" fill="#000" fill-opacity=".08"/>{shape_svg}</svg>"##
    )
}

// === pages ===

fn stock_label(stock: i32) -> String {
    match stock {
        0 => r#"<span class="stock out">Sold out</span>"#.to_string(),
        1..=5 => format!(r#"<span class="stock low">Only {stock} left</span>"#),
        n => format!(r#"<span class="stock">{n} in stock</span>"#),
    }
}

fn add_button(slug: &str, stock: i32, label: &str) -> String {
    let disabled = if stock == 0 { " disabled" } else { "" };
    format!(
        r#"<form method="post" action="/cart/items"><input type="hidden" name="widget" value="{}"><input type="hidden" name="quantity" value="1"><button type="submit" data-add="{}"{disabled}>{label}</button></form>"#,
        esc(slug),
        esc(slug)
    )
}

pub fn catalogue(widgets: &[Widget]) -> String {
    let mut cards = String::new();
    for w in widgets {
        let _ = write!(
            cards,
            r#"<article class="card" id="widget-{slug}">
<a class="art" href="/widgets/{slug}">{art}</a>
<div class="body">
<h2><a href="/widgets/{slug}">{name}</a></h2>
<p class="tagline">{tagline}</p>
{stock}
<div class="row"><span class="price">{price}</span>{add}</div>
</div>
</article>
"#,
            slug = esc(&w.slug),
            art = art(&w.color, &w.shape),
            name = esc(&w.name),
            tagline = esc(&w.tagline),
            stock = stock_label(w.stock),
            price = w.price_cents,
            add = add_button(&w.slug, w.stock, "Add to cart"),
        );
    }
    format!(
        r#"<section class="hero"><div><h1>Widgets for every occasion</h1>
<p>Hand-picked widgets, shipped from our warehouse. Reload the page and watch the badge: any of the shop's servers may answer.</p></div></section>
<section class="grid">
{cards}</section>"#
    )
}

pub fn widget(w: &Widget) -> String {
    let disabled = if w.stock == 0 { " disabled" } else { "" };
    format!(
        r#"<p class="meta"><a href="/">← All widgets</a></p>
<section class="detail" id="widget-{slug}">
<div class="art">{art}</div>
<div>
<h1>{name}</h1>
<p class="tagline">{tagline}</p>
<p>{description}</p>
<p><span class="price">{price}</span> &nbsp; {stock}</p>
<form method="post" action="/cart/items">
<input type="hidden" name="widget" value="{slug}">
<label for="quantity" class="meta">Quantity</label>
<input id="quantity" type="number" name="quantity" value="1" min="1" max="99">
<button type="submit" data-add="{slug}"{disabled}>Add to cart</button>
</form>
</div>
</section>"#,
        slug = esc(&w.slug),
        art = art(&w.color, &w.shape),
        name = esc(&w.name),
        tagline = esc(&w.tagline),
        description = esc(&w.description),
        price = w.price_cents,
        stock = stock_label(w.stock),
    )
}

/// The cart and, when it has anything, the checkout form. `idempotency_key`
/// travels with the form so a double submit places one order.
pub fn cart(cart: &Cart, idempotency_key: &str) -> String {
    if cart.is_empty() {
        return r#"<section class="panel empty" id="cart-empty"><h1>Your cart is empty</h1>
<p class="meta">Our widgets are waiting for you.</p>
<p><a class="button" href="/">Browse the catalogue</a></p></section>"#
            .to_string();
    }
    let mut rows = String::new();
    for l in &cart.lines {
        let warn = if l.quantity > l.stock {
            if l.stock == 0 {
                r#"<div class="warn">Sold out: remove it to check out</div>"#.to_string()
            } else {
                format!(r#"<div class="warn">Only {} left</div>"#, l.stock)
            }
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            r#"<tr data-line="{slug}">
<td class="thumb">{art}</td>
<td><a href="/widgets/{slug}">{name}</a>{warn}</td>
<td class="num">{price}</td>
<td><form method="post" action="/cart/items/{slug}"><input type="number" name="quantity" value="{qty}" min="0" max="99" aria-label="Quantity of {name}"><button class="secondary" type="submit">Update</button></form></td>
<td class="num">{subtotal}</td>
<td><form method="post" action="/cart/items/{slug}/remove"><button class="link" type="submit">Remove</button></form></td>
</tr>
"#,
            slug = esc(&l.slug),
            art = art(&l.color, &l.shape),
            name = esc(&l.name),
            price = l.unit_price_cents,
            qty = l.quantity,
            subtotal = l.subtotal(),
        );
    }
    format!(
        r#"<h1>Your cart</h1>
<div class="cart-layout">
<section class="panel">
<table class="lines" id="cart-lines">
<thead><tr><th></th><th>Widget</th><th class="num">Price</th><th>Quantity</th><th class="num">Subtotal</th><th></th></tr></thead>
<tbody>
{rows}</tbody>
</table>
</section>
<aside class="panel">
<div class="total"><span>Total</span><span id="cart-total">{total}</span></div>
<form method="post" action="/checkout" id="checkout">
<input type="hidden" name="idempotency_key" value="{key}">
<div class="field"><label for="name">Name</label><input id="name" name="name" autocomplete="name" required maxlength="100" placeholder="Ada Lovelace"></div>
<div class="field"><label for="email">Email</label><input id="email" name="email" type="email" autocomplete="email" required placeholder="ada@example.com"></div>
<button type="submit" id="place-order" style="width:100%">Place order</button>
</form>
<p class="meta">No payment needed: this is a demo shop.</p>
</aside>
</div>"#,
        total = cart.total(),
        key = esc(idempotency_key),
    )
}

pub fn order(o: &Order, just_placed: bool) -> String {
    let mut rows = String::new();
    for l in &o.lines {
        let _ = writeln!(
            rows,
            r#"<tr><td><a href="/widgets/{slug}">{name}</a></td><td class="num">{price}</td><td class="num">{qty}</td><td class="num">{subtotal}</td></tr>"#,
            slug = esc(&l.slug),
            name = esc(&l.name),
            price = l.unit_price_cents,
            qty = l.quantity,
            subtotal = l.subtotal(),
        );
    }
    let heading = if just_placed {
        format!(
            r#"<section class="notice ok" id="order-confirmed"><h1>Thank you, {name}!</h1><p>Your order <strong id="order-code">{code}</strong> is confirmed. We will email {email} when it ships.</p></section>"#,
            name = esc(&o.customer_name),
            code = esc(o.code.as_str()),
            email = esc(&o.email),
        )
    } else {
        format!(
            r#"<h1>Order <span id="order-code">{}</span></h1>"#,
            esc(o.code.as_str())
        )
    };
    format!(
        r#"{heading}
<section class="panel" id="order">
<p class="meta">Placed {placed} for {name} &lt;{email}&gt; · recorded by <strong>{placed_by}</strong></p>
<table class="lines">
<thead><tr><th>Widget</th><th class="num">Price</th><th class="num">Quantity</th><th class="num">Subtotal</th></tr></thead>
<tbody>
{rows}</tbody>
</table>
<div class="total" style="margin-top:16px"><span>Total</span><span id="order-total">{total}</span></div>
<a class="button secondary" href="/">Keep shopping</a>
</section>"#,
        placed = o.created_at.format("%Y-%m-%d %H:%M UTC"),
        name = esc(&o.customer_name),
        email = esc(&o.email),
        placed_by = esc(&o.placed_by),
        total = o.total_cents,
    )
}

/// The body of an error page: what happened and what to do. `retry` is
/// where "Try again" leads (the page itself for a GET, the cart after a
/// form post).
pub fn error(p: &Public, retry: &str) -> String {
    let action = match p.code {
        "out_of_stock" | "empty_cart" | "invalid" => {
            r#"<a class="button" href="/cart">Back to your cart</a>"#.to_string()
        }
        "database_unavailable" | "starting" | "timeout" | "fault_injected" => format!(
            r#"<a class="button" href="{}">Try again</a> <a class="button secondary" href="/">Catalogue</a>"#,
            esc(retry)
        ),
        _ => r#"<a class="button" href="/">Back to the catalogue</a>"#.to_string(),
    };
    format!(
        r#"<section class="error" id="error" data-code="{code}">
<div class="code">{status}</div>
<h1>{title}</h1>
<p>{message}</p>
<p>{action}</p>
</section>"#,
        code = p.code,
        status = p.status.as_u16(),
        title = esc(p.title),
        message = esc(&p.message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn every_page_carries_the_badge() {
        let html = page("Catalogue", "shop-<2>", Some(3), "<p>hi</p>");
        assert!(html.contains("served by <strong>shop-&lt;2&gt;</strong></span>"));
        assert!(html.contains(r#"id="cart-count">3<"#));
        assert!(!html.contains("shop-<2>"), "the instance name is escaped");
    }

    #[test]
    fn art_only_accepts_hex_colours() {
        assert!(art("#e4572e", "gear").contains("#e4572e"));
        let hostile = art(r#""/><script>"#, "circle");
        assert!(!hostile.contains("<script>"));
        assert!(hostile.contains("#868e96"));
    }
}

//! The page's stylesheet, script and icon, compiled into the binary: the
//! status page fetches nothing from anywhere else. Each is served under a
//! path carrying a hash of its content, so browsers may keep it for good.

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
    /// FNV-1a of the body, in the URL.
    pub hash: u64,
}

impl Asset {
    const fn new(name: &'static str, content_type: &'static str, body: &'static str) -> Asset {
        Asset {
            name,
            content_type,
            body,
            hash: fnv(body.as_bytes()),
        }
    }

    /// `/ui/assets/ui.css?v=<hash>`
    pub fn href(&self) -> String {
        format!("/ui/assets/{}?v={:016x}", self.name, self.hash)
    }
}

const fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

pub const CSS: Asset = Asset::new(
    "ui.css",
    "text/css; charset=utf-8",
    include_str!("assets/ui.css"),
);
pub const JS: Asset = Asset::new(
    "ui.js",
    "text/javascript; charset=utf-8",
    include_str!("assets/ui.js"),
);
pub const ICON: Asset = Asset::new("icon.svg", "image/svg+xml", include_str!("assets/icon.svg"));

pub const ALL: [&Asset; 3] = [&CSS, &JS, &ICON];

//! Which certificate answers a client hello: the leaf names, exact first,
//! then a wildcard covering exactly one label (`*.example.com` matches
//! `a.example.com`, not `example.com` nor `a.b.example.com`), as browsers
//! match them (RFC 6125 §6.4.3).

use std::collections::HashMap;

/// Server names to an index into the caller's list of certificates.
#[derive(Debug, Clone, Default)]
pub struct Names {
    exact: HashMap<String, usize>,
    /// Keyed by what follows the `*.`.
    wildcard: HashMap<String, usize>,
}

impl Names {
    /// Indexes `names` (lowercased) for certificate `index`; the first
    /// certificate to claim a name keeps it.
    pub fn insert<'a>(&mut self, index: usize, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => {
                    self.wildcard.entry(parent.to_owned()).or_insert(index);
                }
                None => {
                    self.exact.entry(name).or_insert(index);
                }
            }
        }
    }

    /// The certificate for `sni` (as the client sent it: rustls has
    /// already checked it is a DNS name, and lowercased it).
    pub fn lookup(&self, sni: &str) -> Option<usize> {
        let sni = sni.trim_end_matches('.');
        if let Some(&i) = self.exact.get(sni) {
            return Some(i);
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_win_and_wildcards_cover_one_label() {
        let mut n = Names::default();
        n.insert(0, ["*.example.com", "Example.com"]);
        n.insert(1, ["shop.example.com"]);
        n.insert(2, ["shop.example.com", "other.test"]);
        assert_eq!(
            n.lookup("shop.example.com"),
            Some(1),
            "exact beats wildcard"
        );
        assert_eq!(n.lookup("a.example.com"), Some(0));
        assert_eq!(n.lookup("example.com"), Some(0));
        assert_eq!(n.lookup("example.com."), Some(0));
        assert_eq!(n.lookup("a.b.example.com"), None, "one label only");
        assert_eq!(n.lookup("other.test"), Some(2));
        assert_eq!(n.lookup("nothing.test"), None);
        assert_eq!(n.lookup("com"), None);
    }
}

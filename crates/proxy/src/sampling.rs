//! How many requests are traced: a ratio per pool (the proxy's flags),
//! applied to trace ids as OpenTelemetry's `TraceIdRatioBased` sampler
//! does, so every hop using the same rule agrees on a trace.

use std::str::FromStr;

use tandem_core::PoolName;

/// A share of requests, in millionths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleRatio(u32);

impl SampleRatio {
    pub const NEVER: Self = Self(0);
    pub const ALWAYS: Self = Self(1_000_000);

    /// The trace ids sampled are those whose low 64 bits are below this.
    pub fn threshold(self) -> u64 {
        if self == Self::ALWAYS {
            u64::MAX
        } else {
            ((u128::from(self.0) << 64) / 1_000_000) as u64
        }
    }
}

impl Default for SampleRatio {
    /// 1 %: enough to see what requests do, cheap enough to leave on.
    fn default() -> Self {
        Self(10_000)
    }
}

impl std::fmt::Display for SampleRatio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", f64::from(self.0) / 1e6)
    }
}

impl FromStr for SampleRatio {
    type Err = String;

    /// `0.01` or `1%`.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (number, scale) = match t.strip_suffix('%') {
            Some(n) => (n.trim(), 100.0),
            None => (t, 1.0),
        };
        number
            .parse::<f64>()
            .ok()
            .map(|v| v / scale)
            .filter(|v| (0.0..=1.0).contains(v))
            .map(|v| Self((v * 1e6).round() as u32))
            .ok_or_else(|| {
                format!("{s:?} is not a ratio between 0 and 1 (e.g. 0.01) or a percentage (1%)")
            })
    }
}

/// Is a trace with this id sampled under `threshold`?
pub fn sampled_by(threshold: u64, trace_id: u128) -> bool {
    threshold == u64::MAX || (trace_id as u64) < threshold
}

/// The ratio for each pool: a default and exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sampling {
    pub default: SampleRatio,
    pub pools: Vec<(PoolName, SampleRatio)>,
}

impl Sampling {
    pub fn for_pool(&self, pool: &PoolName) -> SampleRatio {
        self.pools
            .iter()
            .find(|(p, _)| p == pool)
            .map_or(self.default, |(_, r)| *r)
    }
}

/// `pool=ratio` pairs, comma-separated (`shop=0.5,api=100%`).
pub fn parse_pool_ratios(s: &str) -> Result<Vec<(PoolName, SampleRatio)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (pool, ratio) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not pool=ratio"))?;
            let pool = PoolName::new(pool.trim()).map_err(|e| format!("{pool:?}: {}", e.rule))?;
            Ok((pool, ratio.parse()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_read_as_fractions_or_percentages_and_bound_the_trace_ids() {
        assert_eq!("0.01".parse(), Ok(SampleRatio(10_000)));
        assert_eq!("1%".parse(), Ok(SampleRatio(10_000)));
        assert_eq!("100 %".parse(), Ok(SampleRatio::ALWAYS));
        assert_eq!("0".parse(), Ok(SampleRatio::NEVER));
        for bad in ["1.5", "-0.1", "x", "NaN", "200%"] {
            assert!(bad.parse::<SampleRatio>().is_err(), "{bad}");
        }
        let half = SampleRatio(500_000).threshold();
        assert!(sampled_by(half, 1));
        assert!(sampled_by(half, (1 << 63) - 1));
        assert!(!sampled_by(half, 1 << 63));
        assert!(!sampled_by(SampleRatio::NEVER.threshold(), 1));
        assert!(sampled_by(SampleRatio::ALWAYS.threshold(), u128::MAX));
        // About the ratio over many ids.
        let t = SampleRatio(10_000).threshold();
        let hits = (0..100_000u128)
            .filter(|i| sampled_by(t, i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)))
            .count();
        assert!((700..1_300).contains(&hits), "{hits}");
        assert_eq!(
            parse_pool_ratios("shop=0.5, api=100%,").unwrap(),
            vec![
                (PoolName::new("shop").unwrap(), SampleRatio(500_000)),
                (PoolName::new("api").unwrap(), SampleRatio::ALWAYS),
            ]
        );
        assert!(parse_pool_ratios("shop").is_err());
        assert!(parse_pool_ratios("shop=2").is_err());
    }
}

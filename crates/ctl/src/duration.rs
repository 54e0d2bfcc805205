//! Durations and other small values as operators type them on the command
//! line, and back.
//!
//! The control API speaks whole milliseconds (`interval_ms`, ...); flags take
//! `1s`, `500ms`, `2m`, `1.5s`, `1h` or a bare number of milliseconds. Only the
//! syntax is checked here: bounds (say, an interval of at least 100 ms) are
//! the control plane's, so there is one source of truth and its error names
//! the field.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration in whole milliseconds, as the control API carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u32);

impl Millis {
    pub fn get(self) -> u32 {
        self.0
    }

    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0.into())
    }
}

/// A value that is not a duration, with what was typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason}; write e.g. 500ms, 1s, 1.5s, 2m, 1h or plain milliseconds"
)]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl FromStr for Millis {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let ms_per_unit: u64 = match unit {
            "" | "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(err("unknown unit")),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(err("missing number"));
        }
        if number.ends_with('.') || frac.contains('.') {
            return Err(err("not a number"));
        }
        let too_long = || err("too long (at most 49 days)");
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_long())?
        };
        let mut total = whole.checked_mul(ms_per_unit).ok_or_else(too_long)?;
        // Exact decimal arithmetic, so 1.5s is 1500 ms and 0.0005s is refused.
        // Past nine significant digits no fraction of an hour or less is a
        // whole number of milliseconds.
        let frac = frac.trim_end_matches('0');
        if !frac.is_empty() {
            let not_whole = || err("finer than a millisecond");
            if frac.len() > 9 {
                return Err(not_whole());
            }
            let numerator: u64 = frac.parse().map_err(|_| err("not a number"))?;
            let scaled = numerator * ms_per_unit; // < 10^9 * 3.6 * 10^6
            let denominator = 10u64.pow(frac.len() as u32);
            if !scaled.is_multiple_of(denominator) {
                return Err(not_whole());
            }
            total = total
                .checked_add(scaled / denominator)
                .ok_or_else(too_long)?;
        }
        u32::try_from(total).map(Millis).map_err(|_| too_long())
    }
}

/// Writes the shortest exact form the parser reads back: `1s`, `1.5s`,
/// `2m`, `250ms`.
impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (unit, size) in [("h", 3_600_000), ("m", 60_000)] {
            if ms >= size && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        if ms >= 1_000 {
            let (secs, rest) = (ms / 1_000, ms % 1_000);
            if rest == 0 {
                return write!(f, "{secs}s");
            }
            let frac = format!("{rest:03}");
            return write!(f, "{secs}.{}s", frac.trim_end_matches('0'));
        }
        write!(f, "{ms}ms")
    }
}

/// A duration the way flags take it (`10s`, `1.5s`), for messages.
pub fn format_duration(d: Duration) -> String {
    match u32::try_from(d.as_millis()) {
        Ok(ms) => Millis(ms).to_string(),
        Err(_) => format!("{d:?}"),
    }
}

/// A per-call timeout: a duration that is not zero.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let ms: Millis = s.parse().map_err(|e: DurationError| e.to_string())?;
    if ms.0 == 0 {
        return Err("the timeout must be greater than zero".into());
    }
    Ok(ms.as_duration())
}

/// An inclusive range of HTTP statuses: `200-399`, or `200` for one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub min: u32,
    pub max: u32,
}

impl FromStr for StatusRange {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || {
            format!(
                "invalid status range {input:?}: use MIN-MAX (e.g. 200-399) or one status (e.g. 200)"
            )
        };
        let number = |s: &str| -> Result<u32, String> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            s.parse().map_err(|_| err())
        };
        let (min, max) = match input.split_once('-') {
            Some((min, max)) => (number(min)?, number(max)?),
            None => {
                let n = number(input)?;
                (n, n)
            }
        };
        Ok(Self { min, max })
    }
}

/// A percentage as typed: `20` or `20%`. Bounds are the control plane's.
pub fn parse_percent(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_end_matches('%');
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid percentage {s:?}: use a whole number such as 20 or 20%"
        ));
    }
    digits
        .parse()
        .map_err(|_| format!("invalid percentage {s:?}: too large"))
}

/// A size in bytes as typed: `1048576`, `512k`, `10MiB`, `1g` (binary
/// multiples, as nginx's `client_max_body_size`; any case, `B` optional).
pub fn parse_size(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let err =
        |why: &str| format!("invalid size {input:?}: {why}; write e.g. 1048576, 512k, 10MiB or 1g");
    if number.is_empty() {
        return Err(err("missing number"));
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(err("unknown unit")),
    };
    let n: u64 = number.parse().map_err(|_| err("too large"))?;
    n.checked_mul(1 << shift).ok_or_else(|| err("too large"))
}

/// A size the way [`parse_size`] reads it back, in the largest whole unit:
/// `10MiB`, `512KiB`, `1000B`.
pub fn format_size(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_units_and_back() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("2 GB"), Ok(2 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("MiB").unwrap_err().contains("missing number"));
        assert!(
            parse_size("10 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("1.5m").unwrap_err().contains("unknown unit"));
        assert!(
            parse_size("99999999999999999999g")
                .unwrap_err()
                .contains("too large")
        );
        for n in [0, 1000, 10 << 20, 512 << 10, 3 << 30] {
            assert_eq!(parse_size(&format_size(n)), Ok(n), "{}", format_size(n));
        }
        assert_eq!(format_size(10 << 20), "10MiB");
    }

    fn ms(s: &str) -> Result<u32, DurationError> {
        s.parse::<Millis>().map(Millis::get)
    }

    #[test]
    fn durations_in_each_unit() {
        assert_eq!(ms("1s"), Ok(1_000));
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("2m"), Ok(120_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("1.5s"), Ok(1_500));
        assert_eq!(ms("0.25s"), Ok(250));
        assert_eq!(ms(".5s"), Ok(500));
        assert_eq!(ms("1.500s"), Ok(1_500));
        assert_eq!(ms("2.5m"), Ok(150_000));
        assert_eq!(ms("750"), Ok(750), "plain milliseconds");
        assert_eq!(ms("0"), Ok(0));
        assert_eq!(ms(" 10ms "), Ok(10));
    }

    #[test]
    fn anything_else_is_refused_with_the_input_and_examples() {
        for bad in [
            "",
            "s",
            "abc",
            "1 s",
            "1sec",
            "1S",
            "-1s",
            "1.2.3s",
            "1.s",
            "1e3",
            "1.5ms",
            "0.0005s",
            "5d",
            "4294967296",
            "50000h",
            "1s500ms",
        ] {
            let e = ms(bad).expect_err(bad).to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
            assert!(e.contains("500ms, 1s"), "{e}");
        }
    }

    #[test]
    fn display_reads_back() {
        for (v, text) in [
            (0, "0ms"),
            (250, "250ms"),
            (1_000, "1s"),
            (1_500, "1.5s"),
            (1_050, "1.05s"),
            (120_000, "2m"),
            (90_000, "90s"),
            (3_600_000, "1h"),
        ] {
            assert_eq!(Millis(v).to_string(), text);
            assert_eq!(ms(text), Ok(v));
        }
    }

    #[test]
    fn timeouts_are_positive() {
        assert_eq!(parse_timeout("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn status_ranges() {
        let r: StatusRange = "200-399".parse().unwrap();
        assert_eq!((r.min, r.max), (200, 399));
        let r: StatusRange = "204".parse().unwrap();
        assert_eq!((r.min, r.max), (204, 204));
        let r: StatusRange = " 200 - 299 ".parse().unwrap();
        assert_eq!((r.min, r.max), (200, 299));
        for bad in [
            "",
            "-",
            "200-",
            "-399",
            "2xx",
            "200-399-500",
            "200..399",
            "+200",
        ] {
            let e = bad.parse::<StatusRange>().expect_err(bad);
            assert!(e.contains("MIN-MAX"), "{e}");
        }
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("20"), Ok(20));
        assert_eq!(parse_percent("20%"), Ok(20));
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("half").is_err());
        assert!(parse_percent("%").is_err());
    }
}

//! The chunked transfer coding (RFC 9112 §7.1): a decoder that works over
//! whatever bytes have arrived, and the pieces an encoder writes.
//!
//! The decoder is strict where leniency lets two parsers disagree about
//! where a body ends (the classic desynchronisation vectors): every line
//! ends in CRLF (a bare LF or a lone CR is an error), the size is 1 to 16
//! hex digits with nothing before them, chunk extensions are checked
//! against their grammar, data must be followed by CRLF, and trailer lines
//! must be fields. Extensions and trailers are read and dropped: a proxy
//! that re-encodes the body writes neither.

use std::ops::Range;

/// The longest chunk-size line (with its extensions) accepted.
pub const MAX_LINE: usize = 4 * 1024;
/// The most trailer bytes accepted after the last chunk.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    Size,
    #[error("invalid chunk extension")]
    Extension,
    #[error("chunk line not ended by CRLF")]
    LineEnd,
    #[error("chunk line too long")]
    LineTooLong,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("invalid trailer field")]
    Trailer,
    #[error("trailer section too large")]
    TrailersTooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
    Done,
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkDecoder {
    state: State,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// What one call of [`ChunkDecoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input used (framing and the data below).
    pub consumed: usize,
    /// Body data, within the input.
    pub data: Option<Range<usize>>,
}

impl ChunkDecoder {
    pub fn new() -> Self {
        Self { state: State::Size }
    }

    /// The last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads `input` (what has arrived and was not consumed before) up to
    /// the next piece of data, the end of the body, or the end of what is
    /// complete. Incomplete lines are left unconsumed for the next call.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkError> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                State::Done => return Ok(Decoded::framing(at)),
                State::Size => {
                    let Some(line) = line(rest)? else {
                        return Ok(Decoded::framing(at));
                    };
                    at += line.len() + 2;
                    let size = size_line(line)?;
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(Decoded::framing(at));
                    }
                    let n = left.min(rest.len() as u64) as usize;
                    self.state = if n as u64 == left {
                        State::DataEnd
                    } else {
                        State::Data(left - n as u64)
                    };
                    return Ok(Decoded {
                        consumed: at + n,
                        data: Some(at..at + n),
                    });
                }
                State::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        at += 2;
                        self.state = State::Size;
                    }
                    [] | [b'\r'] => return Ok(Decoded::framing(at)),
                    _ => return Err(ChunkError::DataEnd),
                },
                State::Trailers(seen) => {
                    let Some(line) = line(rest)? else {
                        if seen + rest.len() > MAX_TRAILERS {
                            return Err(ChunkError::TrailersTooLarge);
                        }
                        return Ok(Decoded::framing(at));
                    };
                    at += line.len() + 2;
                    if line.is_empty() {
                        self.state = State::Done;
                        continue;
                    }
                    let seen = seen + line.len() + 2;
                    if seen > MAX_TRAILERS {
                        return Err(ChunkError::TrailersTooLarge);
                    }
                    trailer_line(line)?;
                    self.state = State::Trailers(seen);
                }
            }
        }
    }
}

impl Decoded {
    fn framing(consumed: usize) -> Self {
        Self {
            consumed,
            data: None,
        }
    }
}

/// The next CRLF-ended line of `input`, without its CRLF; `None` while it
/// is incomplete.
fn line(input: &[u8]) -> Result<Option<&[u8]>, ChunkError> {
    match input.iter().position(|&b| b == b'\n') {
        Some(0) => Err(ChunkError::LineEnd),
        Some(lf) if input[lf - 1] != b'\r' => Err(ChunkError::LineEnd),
        Some(lf) if lf - 1 > MAX_LINE => Err(ChunkError::LineTooLong),
        Some(lf) => {
            let line = &input[..lf - 1];
            if line.contains(&b'\r') {
                return Err(ChunkError::LineEnd);
            }
            Ok(Some(line))
        }
        None if input.len() > MAX_LINE => Err(ChunkError::LineTooLong),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]`: 1 to 16 hex digits, then extensions
/// (`*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`).
fn size_line(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(ChunkError::Size);
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        size = size << 4 | u64::from((d as char).to_digit(16).unwrap_or(0));
    }
    extensions(&line[digits..])?;
    Ok(size)
}

fn extensions(mut s: &[u8]) -> Result<(), ChunkError> {
    let bad = ChunkError::Extension;
    loop {
        s = bws(s);
        match s {
            [] => return Ok(()),
            [b';', rest @ ..] => s = bws(rest),
            _ => return Err(bad),
        }
        let name = s
            .iter()
            .take_while(|&&b| crate::fields::is_tchar(b))
            .count();
        if name == 0 {
            return Err(bad);
        }
        s = bws(&s[name..]);
        if let [b'=', rest @ ..] = s {
            s = bws(rest);
            s = match s {
                [b'"', rest @ ..] => quoted(rest).ok_or(bad)?,
                _ => {
                    let n = s
                        .iter()
                        .take_while(|&&b| crate::fields::is_tchar(b))
                        .count();
                    if n == 0 {
                        return Err(bad);
                    }
                    &s[n..]
                }
            };
        }
    }
}

fn bws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

/// The rest after a quoted string whose opening quote is gone.
fn quoted(mut s: &[u8]) -> Option<&[u8]> {
    let text = |b: u8| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80;
    loop {
        match s {
            [b'"', rest @ ..] => return Some(rest),
            [b'\\', c, rest @ ..] if text(*c) => s = rest,
            [c, rest @ ..] if text(*c) && *c != b'\\' => s = rest,
            _ => return None,
        }
    }
}

/// A trailer line must be a field (`name: value`); it is then dropped.
fn trailer_line(line: &[u8]) -> Result<(), ChunkError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(ChunkError::Trailer)?;
    if !crate::fields::is_token(&line[..colon])
        || !crate::fields::is_field_value(&line[colon + 1..])
    {
        return Err(ChunkError::Trailer);
    }
    Ok(())
}

// === encoding ===

/// A chunk's size line: its length in lowercase hex, then CRLF.
pub fn size_line_into(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// What follows each chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";
/// The last chunk, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `data` as one chunk (nothing for empty data, which would end the body).
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    size_line_into(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(CHUNK_END);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` fed in pieces of `step` bytes, as a socket would
    /// deliver it: the body, and whether it ended.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, bool, usize), ChunkError> {
        let mut d = ChunkDecoder::new();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut fed = 0;
        let mut used = 0;
        while !d.is_done() {
            let r = d.decode(&buf)?;
            if let Some(data) = &r.data {
                out.extend_from_slice(&buf[data.clone()]);
            }
            buf.drain(..r.consumed);
            used += r.consumed;
            if r.data.is_none() && !d.is_done() {
                if fed == input.len() {
                    break;
                }
                let n = step.min(input.len() - fed);
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
        }
        Ok((out, d.is_done(), used))
    }

    #[test]
    fn bodies_decode_across_any_split_and_stop_at_their_end() {
        let raw: &[u8] =
            b"5;ext=1;q=\"a b\\\"\"\r\nhello\r\n7 ; x\r\n, world\r\n0\r\nx-trailer: dropped\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, raw.len()] {
            let (body, done, used) = decode_in_steps(raw, step).unwrap();
            assert!(done, "step {step}");
            assert_eq!(body, b"hello, world", "step {step}");
            assert_eq!(
                &raw[used..],
                b"NEXT",
                "step {step}: nothing past the end is taken"
            );
        }
    }

    #[test]
    fn what_parsers_could_disagree_on_is_refused() {
        let cases: &[(&[u8], ChunkError)] = &[
            (b"zz\r\n", ChunkError::Size),
            (b"\r\n", ChunkError::Size),
            (b" 5\r\nhello\r\n", ChunkError::Size),
            (b"+5\r\nhello\r\n", ChunkError::Size),
            (b"0x5\r\nhello\r\n", ChunkError::Extension),
            (b"11111111111111111\r\n", ChunkError::Size),
            (b"5\nhello\r\n", ChunkError::LineEnd),
            (b"5\r\r\nhello", ChunkError::LineEnd),
            (b"5;a\rb\r\n", ChunkError::LineEnd),
            (b"5;\r\n", ChunkError::Extension),
            (b"5;a=\r\n", ChunkError::Extension),
            (b"5;a=\"x\r\n", ChunkError::Extension),
            (b"5;a\x00\r\n", ChunkError::Extension),
            (b"5 x\r\n", ChunkError::Extension),
            (b"2\r\nabXY", ChunkError::DataEnd),
            (b"2\r\nab\n0\r\n\r\n", ChunkError::DataEnd),
            (b"0\r\nno colon\r\n\r\n", ChunkError::Trailer),
            (b"0\r\nbad name: x\r\n\r\n", ChunkError::Trailer),
            (b"0\r\nx: a\x01\r\n\r\n", ChunkError::Trailer),
            (b"0\r\n\n", ChunkError::LineEnd),
        ];
        for (raw, want) in cases {
            for step in [1, raw.len()] {
                assert_eq!(
                    decode_in_steps(raw, step).map(|r| r.0),
                    Err(*want),
                    "{:?} in steps of {step}",
                    String::from_utf8_lossy(raw)
                );
            }
        }
        let long = format!("5;{}\r\n", "a".repeat(MAX_LINE));
        assert_eq!(
            decode_in_steps(long.as_bytes(), 64).map(|r| r.0),
            Err(ChunkError::LineTooLong)
        );
        let trailers = format!("0\r\n{}", "x: y\r\n".repeat(MAX_TRAILERS / 6 + 1));
        assert_eq!(
            decode_in_steps(trailers.as_bytes(), 100).map(|r| r.0),
            Err(ChunkError::TrailersTooLarge)
        );
    }

    #[test]
    fn size_lines_are_lowercase_hex() {
        for (len, want) in [(1, "1\r\n"), (255, "ff\r\n"), (4096, "1000\r\n")] {
            let mut out = Vec::new();
            size_line_into(&mut out, len);
            assert_eq!(out, want.as_bytes());
        }
        let mut out = Vec::new();
        encode_chunk(&mut out, b"");
        assert!(out.is_empty(), "an empty chunk would end the body");
    }

    proptest! {
        /// Whatever the chunk sizes, extensions and trailers, and however
        /// the bytes arrive, what was encoded is what is decoded, and the
        /// decoder stops exactly at the body's end.
        #[test]
        fn encoded_bodies_decode_to_themselves(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
            ext in proptest::option::of("[a-z]{1,5}(=[a-z0-9]{1,5})?"),
            trailers in proptest::collection::vec(("[a-z][a-z-]{0,8}", "[ -~]{0,20}"), 0..3),
            step in 1usize..64,
        ) {
            let mut raw = Vec::new();
            for c in &chunks {
                raw.extend_from_slice(format!("{:X}", c.len()).as_bytes());
                if let Some(e) = &ext {
                    raw.extend_from_slice(format!(";{e}").as_bytes());
                }
                raw.extend_from_slice(b"\r\n");
                raw.extend_from_slice(c);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"0\r\n");
            for (n, v) in &trailers {
                raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            raw.extend_from_slice(b"\r\nGET / HTTP/1.1\r\n");
            let (body, done, used) = decode_in_steps(&raw, step).unwrap();
            prop_assert!(done);
            prop_assert_eq!(body, chunks.concat());
            prop_assert_eq!(&raw[used..], b"GET / HTTP/1.1\r\n");
        }

        /// Arbitrary bytes never panic the decoder, and what it returns as
        /// data always lies within the input.
        #[test]
        fn arbitrary_input_is_decoded_or_refused(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut d = ChunkDecoder::new();
            let mut at = 0;
            while let Ok(r) = d.decode(&input[at..]) {
                if let Some(data) = &r.data {
                    prop_assert!(data.end <= input.len() - at);
                }
                if r.consumed == 0 {
                    break;
                }
                at += r.consumed;
            }
        }
    }
}

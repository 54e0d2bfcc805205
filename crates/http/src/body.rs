//! Reading a message body out of a connection's read buffer, by the
//! framing its head decided: a length, chunked, or until the connection
//! closes. The same decoder serves request bodies (from clients) and
//! response bodies (from backends).

use bytes::{Bytes, BytesMut};

use crate::chunked::{ChunkDecoder, ChunkError};

/// Where a body being read stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyDecoder {
    /// Nothing (more) to read.
    Done,
    /// This many bytes left.
    Length(u64),
    Chunked(ChunkDecoder),
    /// Everything until the peer closes (responses only).
    UntilClose,
}

/// The next piece of a body.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Data(Bytes),
    /// The body is complete.
    End,
    /// What is buffered holds no more of it: read more.
    NeedMore,
}

impl BodyDecoder {
    pub fn length(n: u64) -> Self {
        if n == 0 { Self::Done } else { Self::Length(n) }
    }

    pub fn chunked() -> Self {
        Self::Chunked(ChunkDecoder::new())
    }

    pub fn is_done(&self) -> bool {
        *self == Self::Done
    }

    /// The exact number of bytes still to come, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Self::Done => Some(0),
            Self::Length(n) => Some(*n),
            _ => None,
        }
    }

    /// Takes the next piece of the body off the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Piece, ChunkError> {
        match self {
            Self::Done => Ok(Piece::End),
            Self::Length(_) | Self::UntilClose if buf.is_empty() => Ok(Piece::NeedMore),
            Self::Length(left) => {
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    *self = Self::Done;
                }
                Ok(Piece::Data(buf.split_to(n).freeze()))
            }
            Self::UntilClose => Ok(Piece::Data(buf.split().freeze())),
            Self::Chunked(d) => {
                let r = d.decode(buf)?;
                let done = d.is_done();
                let piece = match r.data {
                    Some(range) => {
                        let mut taken = buf.split_to(r.consumed);
                        let data = taken.split_off(range.start);
                        Piece::Data(data.freeze())
                    }
                    None => {
                        let _ = buf.split_to(r.consumed);
                        if done { Piece::End } else { Piece::NeedMore }
                    }
                };
                if done && piece == Piece::End {
                    *self = Self::Done;
                }
                Ok(piece)
            }
        }
    }

    /// The peer closed its side: fine only for a body that ends so.
    pub fn closed(&mut self) -> Result<(), Incomplete> {
        match self {
            Self::Done => Ok(()),
            Self::UntilClose => {
                *self = Self::Done;
                Ok(())
            }
            _ => Err(Incomplete),
        }
    }
}

/// The connection closed before the body's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection closed within the body")]
pub struct Incomplete;

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(d: &mut BodyDecoder, buf: &mut BytesMut) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        loop {
            match d.decode(buf).unwrap() {
                Piece::Data(b) => out.extend_from_slice(&b),
                Piece::End => return (out, true),
                Piece::NeedMore => return (out, false),
            }
        }
    }

    #[test]
    fn each_framing_takes_its_body_and_leaves_the_rest() {
        let mut buf = BytesMut::from(&b"helloNEXT"[..]);
        let mut d = BodyDecoder::length(5);
        assert_eq!(drain(&mut d, &mut buf), (b"hello".to_vec(), true));
        assert_eq!(&buf[..], b"NEXT");

        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nNEXT"[..]);
        let mut d = BodyDecoder::chunked();
        assert_eq!(drain(&mut d, &mut buf), (b"abc".to_vec(), true));
        assert!(d.is_done());
        assert_eq!(&buf[..], b"NEXT");

        let mut buf = BytesMut::from(&b"3\r\nab"[..]);
        let mut d = BodyDecoder::chunked();
        assert_eq!(drain(&mut d, &mut buf), (b"ab".to_vec(), false));
        assert_eq!(d.closed(), Err(Incomplete));

        let mut buf = BytesMut::from(&b"all of it"[..]);
        let mut d = BodyDecoder::UntilClose;
        assert_eq!(drain(&mut d, &mut buf), (b"all of it".to_vec(), false));
        assert_eq!(d.closed(), Ok(()));
        assert!(d.is_done());
        assert_eq!(BodyDecoder::length(0), BodyDecoder::Done);
        assert_eq!(BodyDecoder::length(3).closed(), Err(Incomplete));
    }
}

//! Postcard into a vector the caller owns, written by slices, or to a writer in chunks.
//!
//! `postcard::to_extend` goes through `Extend` byte by byte (a capacity check and a push per
//! byte: a tenth of the trigger consumer's time in one profile, and the pipeline's snapshot
//! of a gigabyte and more went that way too). [`AppendTo`] appends each slice postcard
//! hands it at once, to a vector that may already hold a header or be sized ahead.

/// A postcard flavor that appends to a vector by slices.
pub(crate) struct AppendTo<'a>(pub &'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends the postcard encoding of `value` to `out` (its bytes are those
/// `postcard::to_extend(value, out)` gives).
pub(crate) fn append<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> postcard::Result<()> {
    postcard::serialize_with_flavor(value, AppendTo(out))
}

/// Why a value could not be written out: the writer failed (a full disk, say), or the
/// value did not encode (its message).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Encode(String),
}

/// A postcard flavor that writes a value to a writer as it is encoded, so that a value of
/// gigabytes (a snapshot) goes to its file without ever being held whole. Postcard hands
/// over a few bytes at a time (a varint, a short text), tens of millions of slices for a
/// snapshot: passed on one by one, each went through the writer's own calls (a buffered
/// file, a running hash), and the snapshot thread took twice as long as encoding into a
/// vector (8–10 s against 4–6 s for 1.5–1.7 GB, stop 44). So the slices gather in a
/// buffer of [`WRITE_CHUNK`] bytes, the writer getting whole chunks. The writer's first
/// error is kept in `failed` and ends the encoding (postcard's own error type has no room
/// for it).
struct WriteTo<'a, W: std::io::Write> {
    out: &'a mut W,
    buffer: Vec<u8>,
    failed: &'a mut Option<std::io::Error>,
}

/// The bytes [`WriteTo`] gathers before the writer gets them: few calls to the writer,
/// and a buffer that stays in the core's cache.
const WRITE_CHUNK: usize = 256 * 1024;

impl<W: std::io::Write> WriteTo<'_, W> {
    /// Hands the buffer to the writer.
    fn drain(&mut self) -> postcard::Result<()> {
        let written = self.out.write_all(&self.buffer);
        self.buffer.clear();
        self.keep_error(written)
    }

    /// The writer's error kept, postcard told to stop.
    fn keep_error(&mut self, written: std::io::Result<()>) -> postcard::Result<()> {
        written.map_err(|error| {
            *self.failed = Some(error);
            postcard::Error::SerializeBufferFull
        })
    }
}

impl<W: std::io::Write> postcard::ser_flavors::Flavor for WriteTo<'_, W> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.buffer.len() + data.len() > WRITE_CHUNK {
            self.drain()?;
        }
        if data.len() > WRITE_CHUNK {
            // A long text or byte string: passed on as it is.
            let written = self.out.write_all(data);
            return self.keep_error(written);
        }
        self.buffer.extend_from_slice(data);
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if self.buffer.len() == WRITE_CHUNK {
            self.drain()?;
        }
        self.buffer.push(data);
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<()> {
        self.drain()
    }
}

/// Writes the postcard encoding of `value` to `out` (the bytes [`append`] gives), in
/// chunks of [`WRITE_CHUNK`] bytes (see [`WriteTo`]).
pub(crate) fn write<T: serde::Serialize + ?Sized, W: std::io::Write>(
    value: &T,
    out: &mut W,
) -> Result<(), WriteError> {
    let mut failed = None;
    let written = postcard::serialize_with_flavor(
        value,
        WriteTo {
            out,
            buffer: Vec::with_capacity(WRITE_CHUNK),
            failed: &mut failed,
        },
    );
    match (written, failed) {
        (_, Some(error)) => Err(WriteError::Io(error)),
        (Err(error), None) => Err(WriteError::Encode(error.to_string())),
        (Ok(()), None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(serde::Serialize)]
    struct Sample<'a> {
        n: u64,
        text: &'a str,
        list: Vec<(u32, i64)>,
    }

    fn sample() -> Sample<'static> {
        Sample {
            n: 300,
            text: "città",
            list: (0..1000).map(|i| (i, -i64::from(i))).collect(),
        }
    }

    /// Larger than a chunk, with a text longer than one between short pieces.
    #[test]
    fn a_value_of_many_chunks_is_written_whole_and_in_order() {
        let long = "é".repeat(WRITE_CHUNK);
        let value = Sample {
            n: u64::MAX,
            text: &long,
            list: (0..200_000).map(|i| (i, i64::from(i) << 40)).collect(),
        };
        let mut appended = Vec::new();
        append(&value, &mut appended).unwrap();
        assert!(appended.len() > 3 * WRITE_CHUNK);
        let mut written = Vec::new();
        write(&value, &mut written).unwrap();
        assert!(written == appended);
        let mut full = Full {
            room: appended.len() - 1,
            taken: Vec::new(),
        };
        assert!(matches!(write(&value, &mut full), Err(WriteError::Io(_))));
        assert!(appended.starts_with(&full.taken));
    }

    #[test]
    fn written_bytes_are_the_appended_ones() {
        let mut appended = b"head".to_vec();
        append(&sample(), &mut appended).unwrap();
        let mut written = b"head".to_vec();
        write(&sample(), &mut written).unwrap();
        assert_eq!(written, appended);
        assert_eq!(
            appended,
            [
                b"head".as_slice(),
                &postcard::to_allocvec(&sample()).unwrap()
            ]
            .concat()
        );
    }

    /// A writer that takes `room` bytes, then fails as a full disk does.
    struct Full {
        room: usize,
        taken: Vec<u8>,
    }

    impl std::io::Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.taken.len() + buf.len() > self.room {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            self.taken.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_writer_failing_midway_is_its_own_error_not_an_encoding_one() {
        let mut full = Full {
            room: 100,
            taken: Vec::new(),
        };
        let error = write(&sample(), &mut full).unwrap_err();
        match error {
            WriteError::Io(io) => assert_eq!(io.raw_os_error(), Some(28), "{io}"),
            other => panic!("expected the writer's error, got {other:?}"),
        }
        assert!(full.taken.len() <= 100);
    }
}

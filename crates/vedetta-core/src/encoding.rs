//! Postcard into a vector the caller owns, written by slices.
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

/// A postcard flavor that hands each slice to a writer as postcard gives it, so that a
/// value of gigabytes (a snapshot) goes to its file without ever being held whole. The
/// writer's first error is kept in `failed` and ends the encoding (postcard's own error
/// type has no room for it).
struct WriteTo<'a, W: std::io::Write> {
    out: &'a mut W,
    failed: &'a mut Option<std::io::Error>,
}

impl<W: std::io::Write> WriteTo<'_, W> {
    #[inline]
    fn put(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.out.write_all(data).map_err(|error| {
            *self.failed = Some(error);
            postcard::Error::SerializeBufferFull
        })
    }
}

impl<W: std::io::Write> postcard::ser_flavors::Flavor for WriteTo<'_, W> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.put(data)
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.put(&[data])
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Writes the postcard encoding of `value` to `out` (the bytes [`append`] gives), slice
/// by slice: a writer meant for many small writes (a buffered file) is the caller's to
/// give.
pub(crate) fn write<T: serde::Serialize + ?Sized, W: std::io::Write>(
    value: &T,
    out: &mut W,
) -> Result<(), WriteError> {
    let mut failed = None;
    let written = postcard::serialize_with_flavor(
        value,
        WriteTo {
            out,
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

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

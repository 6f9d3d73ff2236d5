//! Mappings from other systems' payloads to Vedetta's event contract (docs/events.md).
//!
//! Each mapping is a pure function from a source's JSON to events in our wire form, which
//! then go through the same intake as every other event (`crate::intake`): one set of
//! checks, one set of error messages, whatever the source.

pub mod mapping;
pub mod shopify;

/// A URL query component percent-decoded (`+` as a space); `None` when an escape is not
/// hex or the result is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn percent_decoding() {
        use super::percent_decode;
        assert_eq!(
            percent_decode("saldi%20primavera+2024").unwrap(),
            "saldi primavera 2024"
        );
        assert_eq!(percent_decode("caff%C3%A8").unwrap(), "caffè");
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
        assert_eq!(percent_decode("100%"), Some("100%".into()));
    }
}

//! Lowercase hexadecimal, the one text encoding of key ids, secrets and stored hashes.
//!
//! Kept local (a few lines) so the key format's exact alphabet is visible and tested here.

use serde::{Deserialize, Deserializer, Serializer};

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes the lowercase hex form of `bytes` into `out`, which holds exactly twice as many
/// bytes; extra input or output is ignored rather than panicking.
pub(crate) fn encode_to_slice(bytes: &[u8], out: &mut [u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

/// Appends the lowercase hex form of `bytes` to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
}

/// The lowercase hex form of `bytes`.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    encode_into(bytes, &mut out);
    out
}

/// Whether `byte` is one of `0-9a-f` (uppercase is not accepted anywhere).
pub(crate) fn is_lower_hex_digit(byte: u8) -> bool {
    matches!(byte, b'0'..=b'9' | b'a'..=b'f')
}

fn digit_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

/// Decodes exactly `N` bytes from `2 * N` lowercase hex characters.
pub(crate) fn decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *slot = (digit_value(pair[0])? << 4) | digit_value(pair[1])?;
    }
    Some(out)
}

/// Decodes any even number of lowercase hex characters (cursors and other opaque tokens).
pub(crate) fn decode_vec(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some((digit_value(pair[0])? << 4) | digit_value(pair[1])?))
        .collect()
}

/// Serde adapter storing a 32-byte hash as 64 lowercase hex characters.
pub(crate) mod hash32 {
    use super::*;

    /// Writes the hash as hex.
    pub(crate) fn serialize<S: Serializer>(
        hash: &[u8; 32],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode(hash))
    }

    /// Reads a hash written by [`serialize`]; anything else is an error.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<[u8; 32], D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        decode_array(&text)
            .ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex characters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let bytes = [0x00, 0x01, 0xab, 0xff];
        assert_eq!(encode(&bytes), "0001abff");
        assert_eq!(decode_array::<4>("0001abff"), Some(bytes));
    }

    #[test]
    fn decode_is_strict() {
        assert_eq!(decode_array::<2>("ABCD"), None);
        assert_eq!(decode_array::<2>("abc"), None);
        assert_eq!(decode_array::<2>("abcde"), None);
        assert_eq!(decode_array::<2>("abcg"), None);
        assert_eq!(decode_array::<2>("ab c"), None);
        assert!(is_lower_hex_digit(b'f'));
        assert!(!is_lower_hex_digit(b'F'));
    }
}

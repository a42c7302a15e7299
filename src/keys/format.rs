//! The text of an API key: `<namespace>_<env>_<id>_<secret>`.
//!
//! The format is strict on purpose: exact lengths, lowercase only, exactly four parts. A strict
//! grammar means a key is recognisable wherever it is pasted (logs, URLs, tickets), the display
//! prefix is unambiguous, and the parser has no lenient paths an attacker can probe. Parsing
//! works on bytes and never panics, whatever it is given.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::hex;
use super::secret::{RandomError, Secret};

/// The namespace used when the deployment configures none.
pub const DEFAULT_NAMESPACE: &str = "pcl";

/// Shortest and longest namespace, in characters.
const NAMESPACE_LEN: std::ops::RangeInclusive<usize> = 2..=16;

/// Characters in a key id (4 random bytes).
pub const ID_LEN: usize = 8;

/// Characters in a key secret (20 random bytes, 160 bits).
pub const SECRET_LEN: usize = 40;

/// Bytes of randomness behind a secret.
pub(crate) const SECRET_BYTES: usize = SECRET_LEN / 2;

/// The longest well-formed key; anything longer is refused before it is looked at.
pub const MAX_KEY_LEN: usize = 16 + 1 + 4 + 1 + ID_LEN + 1 + SECRET_LEN;

/// Why a text is not a key, or not a valid namespace.
///
/// Messages describe the rule that failed and never repeat the input: the input may be a
/// real key with a typo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Longer than any key can be.
    #[error("too long to be an API key")]
    TooLong,
    /// Not exactly four `_`-separated parts.
    #[error("an API key has exactly four `_`-separated parts: namespace, env, id, secret")]
    Parts,
    /// The namespace part breaks `[a-z][a-z0-9]{1,15}`.
    #[error(
        "a key namespace is 2-16 characters: a lowercase letter, then lowercase letters or digits"
    )]
    Namespace,
    /// The env part is neither `test` nor `live`.
    #[error("a key environment is `test` or `live`")]
    Env,
    /// The id part is not 8 lowercase hex characters.
    #[error("a key id is 8 lowercase hex characters")]
    Id,
    /// The secret part is not 40 lowercase hex characters.
    #[error("a key secret is 40 lowercase hex characters")]
    Secret,
}

/// A deployment's key namespace (`pcl`, `voti`, `kv`, ...), validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    /// Validates `text` against `[a-z][a-z0-9]{1,15}`. No underscore: it separates key parts.
    pub fn new(text: &str) -> Result<Self, FormatError> {
        if is_namespace(text.as_bytes()) {
            Ok(Self(text.to_owned()))
        } else {
            Err(FormatError::Namespace)
        }
    }

    /// The namespace text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self(DEFAULT_NAMESPACE.to_owned())
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Namespace {
    type Err = FormatError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::new(text)
    }
}

/// Whether a key is for the sandbox (`test`, fake data) or production (`live`, gated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Env {
    /// Sandbox: fake data, no BAA needed.
    Test,
    /// Production: needs HIPAA mode and signed BAA evidence on the organization.
    Live,
}

impl Env {
    /// The text used in keys, config and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Test => "test",
            Self::Live => "live",
        }
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        match bytes {
            b"test" => Some(Self::Test),
            b"live" => Some(Self::Live),
            _ => None,
        }
    }
}

impl fmt::Display for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Env {
    type Err = FormatError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(text.as_bytes()).ok_or(FormatError::Env)
    }
}

/// The public, indexed part of a key: 8 lowercase hex characters.
///
/// Safe to show, log and put in headers; it identifies a key without granting anything.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(u32);

impl KeyId {
    /// A fresh random id (uniqueness is the registry's job).
    pub(crate) fn random() -> Result<Self, RandomError> {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).map_err(RandomError::from)?;
        Ok(Self(u32::from_be_bytes(bytes)))
    }

    /// The id with this numeric value (for placeholders; real ids come from [`KeyId::random`]).
    pub(crate) const fn from_u32(value: u32) -> Self {
        Self(value)
    }

    /// The bytes the id is stored under: its 8-character text.
    pub(crate) fn storage_key(self) -> [u8; ID_LEN] {
        let mut out = [0u8; ID_LEN];
        hex::encode_to_slice(&self.0.to_be_bytes(), &mut out);
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != ID_LEN {
            return None;
        }
        let text = std::str::from_utf8(bytes).ok()?;
        hex::decode_array::<4>(text).map(|b| Self(u32::from_be_bytes(b)))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = FormatError;

    /// Accepts exactly 8 lowercase hex characters, as printed.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(text.as_bytes()).ok_or(FormatError::Id)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|_| serde::de::Error::custom("expected 8 lowercase hex characters"))
    }
}

/// A key text split into its parts, borrowing from the presented text.
///
/// The secret part is reachable only inside the crate, and `Debug` redacts it.
#[derive(Clone, Copy)]
pub struct ParsedKey<'a> {
    namespace: &'a str,
    env: Env,
    id: KeyId,
    secret: &'a [u8],
}

impl<'a> ParsedKey<'a> {
    /// The namespace part (any valid namespace, not necessarily this deployment's).
    pub fn namespace(&self) -> &'a str {
        self.namespace
    }

    /// The env part.
    pub fn env(&self) -> Env {
        self.env
    }

    /// The id part.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// `<namespace>_<env>_<id>`: what logs and dashboards may show.
    pub fn display_prefix(&self) -> String {
        display_prefix(self.namespace, self.env, self.id)
    }

    /// The secret's 40 ASCII bytes, for hashing.
    pub(crate) fn secret(&self) -> &'a [u8] {
        self.secret
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("namespace", &self.namespace)
            .field("env", &self.env)
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Splits `text` into a key's four parts, checking every part exactly.
///
/// Any namespace of the right shape is accepted here; callers compare it with their own.
pub fn parse_key(text: &str) -> Result<ParsedKey<'_>, FormatError> {
    if text.len() > MAX_KEY_LEN {
        return Err(FormatError::TooLong);
    }
    let mut parts = text.split('_');
    let (Some(namespace), Some(env), Some(id), Some(secret), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(FormatError::Parts);
    };
    if !is_namespace(namespace.as_bytes()) {
        return Err(FormatError::Namespace);
    }
    let env = Env::from_bytes(env.as_bytes()).ok_or(FormatError::Env)?;
    let id = KeyId::from_bytes(id.as_bytes()).ok_or(FormatError::Id)?;
    let secret = secret.as_bytes();
    if secret.len() != SECRET_LEN || !secret.iter().all(|&b| hex::is_lower_hex_digit(b)) {
        return Err(FormatError::Secret);
    }
    Ok(ParsedKey {
        namespace,
        env,
        id,
        secret,
    })
}

/// `<namespace>_<env>_<id>`: the part of a key that is safe to display and log.
pub fn display_prefix(namespace: &str, env: Env, id: KeyId) -> String {
    format!("{namespace}_{env}_{id}")
}

/// Assembles the full key text around `secret`, without intermediate copies of the secret.
pub(crate) fn format_key(namespace: &str, env: Env, id: KeyId, secret: &Secret) -> Secret {
    let prefix = display_prefix(namespace, env, id);
    let mut text = String::with_capacity(prefix.len() + 1 + SECRET_LEN);
    text.push_str(&prefix);
    text.push('_');
    text.push_str(secret.expose_secret());
    Secret::from_string(text)
}

fn is_namespace(bytes: &[u8]) -> bool {
    match bytes.split_first() {
        Some((first, rest)) => {
            NAMESPACE_LEN.contains(&bytes.len())
                && first.is_ascii_lowercase()
                && rest
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0a1b2c3d";
    const SECRET: &str = "0123456789abcdef0123456789abcdef01234567";

    fn key(namespace: &str, env: &str, id: &str, secret: &str) -> String {
        format!("{namespace}_{env}_{id}_{secret}")
    }

    /// A small xorshift64* generator: deterministic, dependency-free randomness for tests.
    pub(crate) struct XorShift(u64);

    impl XorShift {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed.max(1))
        }

        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
        }
    }

    #[test]
    fn parses_every_part_and_round_trips() {
        for namespace in ["pcl", "voti", "kv", "vlk", "voka", "a1", "abcdefghij012345"] {
            for env in ["test", "live"] {
                let text = key(namespace, env, ID, SECRET);
                let parsed = parse_key(&text).unwrap();
                assert_eq!(parsed.namespace(), namespace);
                assert_eq!(parsed.env().as_str(), env);
                assert_eq!(parsed.id().to_string(), ID);
                assert_eq!(parsed.secret(), SECRET.as_bytes());
                assert_eq!(parsed.display_prefix(), format!("{namespace}_{env}_{ID}"));
                let rebuilt = format_key(
                    parsed.namespace(),
                    parsed.env(),
                    parsed.id(),
                    &Secret::from_string(SECRET.to_owned()),
                );
                assert_eq!(rebuilt.expose_secret(), text);
            }
        }
        assert_eq!(
            key("abcdefghij012345", "live", ID, SECRET).len(),
            MAX_KEY_LEN
        );
    }

    #[test]
    fn rejects_each_malformed_part() {
        let cases = [
            (key("pcl", "test", ID, SECRET) + "0", FormatError::Secret),
            ("x".repeat(MAX_KEY_LEN + 1), FormatError::TooLong),
            (String::new(), FormatError::Parts),
            ("pcl_test_0a1b2c3d".to_owned(), FormatError::Parts),
            (key("pcl", "test", ID, SECRET) + "_x", FormatError::Parts),
            (format!("pcl__test_{ID}_{SECRET}"), FormatError::Parts),
            (key("p", "test", ID, SECRET), FormatError::Namespace),
            (key("Pcl", "test", ID, SECRET), FormatError::Namespace),
            (key("1pc", "test", ID, SECRET), FormatError::Namespace),
            (key("pc-l", "test", ID, SECRET), FormatError::Namespace),
            (key("", "test", ID, SECRET), FormatError::Namespace),
            (
                key("abcdefghij0123456", "test", ID, ""),
                FormatError::Namespace,
            ),
            (key("pcl", "prod", ID, SECRET), FormatError::Env),
            (key("pcl", "TEST", ID, SECRET), FormatError::Env),
            (key("pcl", "", ID, SECRET), FormatError::Env),
            (key("pcl", "test", "0A1B2C3D", SECRET), FormatError::Id),
            (key("pcl", "test", "0a1b2c3", SECRET), FormatError::Id),
            (key("pcl", "test", "0a1b2c3d4", SECRET), FormatError::Id),
            (key("pcl", "test", "0a1b2c3g", SECRET), FormatError::Id),
            (key("pcl", "test", "", SECRET), FormatError::Id),
            (
                key("pcl", "test", ID, &SECRET.to_uppercase()),
                FormatError::Secret,
            ),
            (key("pcl", "test", ID, &SECRET[1..]), FormatError::Secret),
            (
                key("pcl", "test", ID, &SECRET.replace('a', "z")),
                FormatError::Secret,
            ),
            (key("pcl", "test", ID, ""), FormatError::Secret),
            (
                key("pcl", "test", ID, &SECRET.replace('0', "é")[..40]),
                FormatError::Secret,
            ),
            (
                format!(" {}", key("pcl", "test", ID, SECRET)),
                FormatError::Namespace,
            ),
        ];
        for (text, expected) in cases {
            let got = parse_key(&text).map(|p| p.id());
            assert_eq!(got, Err(expected), "{text:?}");
        }
    }

    #[test]
    fn errors_and_debug_never_show_the_secret() {
        let text = key("pcl", "test", ID, SECRET);
        let parsed = parse_key(&text).unwrap();
        assert!(!format!("{parsed:?}").contains(SECRET));
        let bad = key("pcl", "prod", ID, SECRET);
        let err = parse_key(&bad).unwrap_err();
        assert!(!err.to_string().contains(SECRET));
        assert!(!format!("{err:?}").contains(SECRET));
    }

    #[test]
    fn namespace_validation() {
        for good in ["pcl", "voti", "kv", "vlk", "voka", "a0", "z123456789abcdef"] {
            assert_eq!(Namespace::new(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "a",
            "pc_l",
            "PCL",
            "9ab",
            "ab-c",
            "abcdefghijklmnopq",
            "ñam",
        ] {
            assert_eq!(Namespace::new(bad), Err(FormatError::Namespace), "{bad:?}");
        }
        assert_eq!(Namespace::default().as_str(), DEFAULT_NAMESPACE);
    }

    #[test]
    fn env_text_and_serde() {
        assert_eq!("test".parse::<Env>(), Ok(Env::Test));
        assert_eq!("live".parse::<Env>(), Ok(Env::Live));
        assert_eq!("Live".parse::<Env>(), Err(FormatError::Env));
        assert_eq!(Env::Live.to_string(), "live");
        assert_eq!(serde_json::to_string(&Env::Test).unwrap(), "\"test\"");
        assert_eq!(serde_json::from_str::<Env>("\"live\"").unwrap(), Env::Live);
        assert!(serde_json::from_str::<Env>("\"LIVE\"").is_err());
    }

    #[test]
    fn key_id_text_storage_and_serde() {
        let id: KeyId = "00ff10ab".parse().unwrap();
        assert_eq!(id.to_string(), "00ff10ab");
        assert_eq!(&id.storage_key(), b"00ff10ab");
        assert_eq!(format!("{id:?}"), "KeyId(00ff10ab)");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"00ff10ab\"");
        assert_eq!(serde_json::from_str::<KeyId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<KeyId>("\"00FF10AB\"").is_err());
        for bad in [
            "",
            "00ff10a",
            "00ff10abc",
            "00FF10AB",
            "0x0ff10a",
            "00ff10a\u{e9}",
        ] {
            assert_eq!(bad.parse::<KeyId>(), Err(FormatError::Id), "{bad:?}");
        }
        let random = KeyId::random().unwrap();
        assert_eq!(random.to_string().parse::<KeyId>().unwrap(), random);
        assert_eq!(
            random.storage_key().as_slice(),
            random.to_string().as_bytes()
        );
    }

    /// Generates strings that are garbage, near-keys or mutated keys, and checks that parsing
    /// never panics, that random garbage never parses, and that whatever parses is exactly a
    /// well-formed key.
    #[test]
    fn garbage_never_panics_and_never_parses() {
        const ALPHABET: &[char] = &[
            'a',
            'b',
            'f',
            'g',
            'z',
            'A',
            'F',
            'Z',
            '0',
            '9',
            '_',
            '-',
            ' ',
            '.',
            '/',
            '%',
            '\0',
            '\n',
            'é',
            'ß',
            '€',
            '\u{1f600}',
            '\u{202e}',
            'l',
            'i',
            'v',
            'e',
            't',
            's',
            'p',
            'c',
        ];
        let mut rng = XorShift::new(0x5eed_cafe_f00d_d00d);
        let valid = key("pcl", "live", ID, SECRET);
        let mut parsed_any = 0;
        for round in 0..200_000 {
            let text: String = match round % 3 {
                // Pure garbage of any length around the key length.
                0 => {
                    let len = rng.below(MAX_KEY_LEN + 20);
                    (0..len)
                        .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                        .collect()
                }
                // Four underscore-separated random parts: the right skeleton, wrong content.
                1 => {
                    let part = |rng: &mut XorShift, max: usize| -> String {
                        let len = rng.below(max);
                        (0..len)
                            .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                            .collect()
                    };
                    let parts: Vec<String> = (0..4).map(|_| part(&mut rng, 45)).collect();
                    parts.join("_")
                }
                // A valid key with one character after the namespace (whose length may vary)
                // replaced by a non-hex character, deleted, or duplicated.
                _ => {
                    let mut chars: Vec<char> = valid.chars().collect();
                    let at = "pcl".len() + rng.below(chars.len() - "pcl".len());
                    match rng.below(3) {
                        0 => {
                            let replacement = ['G', '_', 'é', ' ', 'X', '\0'][rng.below(6)];
                            chars[at] = if chars[at] == replacement {
                                'G'
                            } else {
                                replacement
                            };
                        }
                        1 => {
                            chars.remove(at);
                        }
                        _ => chars.insert(at, chars[at]),
                    }
                    chars.into_iter().collect()
                }
            };
            if let Ok(parsed) = parse_key(&text) {
                parsed_any += 1;
                // Anything accepted must be exactly a well-formed key that prints back the same.
                let rebuilt = format!(
                    "{}_{}",
                    parsed.display_prefix(),
                    std::str::from_utf8(parsed.secret()).unwrap()
                );
                assert_eq!(rebuilt, text);
                assert_ne!(round % 3, 0, "random garbage parsed: {text:?}");
            }
        }
        // No mutation after the namespace keeps a key well formed: env, id and secret have
        // fixed lengths and the replacement characters are never hex.
        assert_eq!(parsed_any, 0);
    }
}

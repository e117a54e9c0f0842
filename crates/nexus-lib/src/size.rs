//! Byte sizes as people write them (`4G`, `512M`, `1T`, `20GiB`, plain bytes), parsed the same way by
//! the config file, the API and the CLI. Suffixes are binary (K = 1024) and case-insensitive; sizes
//! are bounded by [`MAX_SIZE`].

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest size accepted anywhere (16 TiB, ext4's limit with 4 KiB blocks).
pub const MAX_SIZE: u64 = 16 << 40;

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("size must not be empty")]
    Empty,
    #[error(
        "invalid size {0:?}: expected a number of bytes or a number with K, M, G or T (e.g. 4G)"
    )]
    Syntax(String),
    #[error("size {0:?} is zero")]
    Zero(String),
    #[error("size {0:?} is larger than the maximum of 16T")]
    TooLarge(String),
}

/// Parses `4G`, `512M`, `1T`, `20GiB`, `100k` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, suffix) = s.split_at(digits);
    let syntax = || SizeError::Syntax(text.to_owned());
    if number.is_empty() || number.len() > 20 {
        return Err(syntax());
    }
    let shift = match suffix.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(syntax()),
    };
    let n: u64 = number.parse().map_err(|_| syntax())?;
    if n == 0 {
        return Err(SizeError::Zero(text.to_owned()));
    }
    let bytes = n
        .checked_mul(1 << shift)
        .filter(|b| *b <= MAX_SIZE)
        .ok_or_else(|| SizeError::TooLarge(text.to_owned()))?;
    Ok(bytes)
}

/// `4294967296` → `4.0 GiB`: for people, never parsed back.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A size in bytes that deserializes from a number or from a string such as `"4G"`, and serializes as
/// a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, SizeError> {
        parse_size(s).map(Self)
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size: a number of bytes or a string such as \"4G\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                parse_size(&v.to_string()).map(ByteSize).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("size {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ByteSize, E> {
                // JSON Schema's integers include `4096.0`.
                crate::api::integral_json_number(v)
                    .ok_or_else(|| E::custom(format!("size {v} is not a whole number of bytes")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_wire_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The string form of a size on the wire (API bodies, `nexus.toml`): the same as [`parse_size`]
/// but written one way only, so that the OpenAPI pattern ([`wire_size_pattern`]) describes it
/// exactly: no surrounding whitespace, no leading zero, at most one space before the suffix.
pub fn parse_wire_size(text: &str) -> Result<u64, SizeError> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let suffix = &text[digits..];
    let suffix = suffix.strip_prefix(' ').unwrap_or(suffix);
    if digits == 0
        || text.starts_with('0') && digits > 1
        || suffix.chars().any(char::is_whitespace)
        || (digits < text.len() && text.ends_with(' '))
    {
        return Err(SizeError::Syntax(text.to_owned()));
    }
    parse_size(text)
}

/// A regular expression matching exactly the strings [`parse_wire_size`] accepts.
pub fn wire_size_pattern() -> String {
    let classes = [
        ("", "([Bb])?", 0),
        ("", "[Kk]([Ii]?[Bb])?", 10),
        ("", "[Mm]([Ii]?[Bb])?", 20),
        ("", "[Gg]([Ii]?[Bb])?", 30),
        ("", "[Tt]([Ii]?[Bb])?", 40),
    ];
    let alternatives: Vec<String> = classes
        .iter()
        .map(|(_, suffix, shift)| {
            let number = integer_range_pattern(MAX_SIZE >> shift);
            if *shift == 0 {
                format!("({number})( ?[Bb])?")
            } else {
                format!("({number}) ?{suffix}")
            }
        })
        .collect();
    format!("^({})$", alternatives.join("|"))
}

/// A regular expression (no anchors) for the decimal integers 1..=max without leading zeros.
fn integer_range_pattern(max: u64) -> String {
    let digits: Vec<u32> = max
        .to_string()
        .bytes()
        .map(|b| u32::from(b - b'0'))
        .collect();
    let n = digits.len();
    let mut alts = Vec::new();
    if n > 1 {
        alts.push(if n == 2 {
            "[1-9]".to_owned()
        } else {
            format!("[1-9][0-9]{{0,{}}}", n - 2)
        });
    }
    let prefix: String = digits
        .iter()
        .map(|d| char::from_digit(*d, 10).unwrap())
        .collect();
    for i in 0..n {
        let low = u32::from(i == 0);
        if digits[i] > low {
            let rest = n - i - 1;
            let tail = if rest == 0 {
                String::new()
            } else {
                format!("[0-9]{{{rest}}}")
            };
            alts.push(format!("{}[{low}-{}]{tail}", &prefix[..i], digits[i] - 1));
        }
    }
    alts.push(prefix);
    alts.join("|")
}

impl utoipa::PartialSchema for ByteSize {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(MAX_SIZE as f64)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(wire_size_pattern())),
            )
            .description(Some(
                "Bytes, or a string with a binary suffix such as \"4G\" or \"512M\" (at most 16T)",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ByteSize {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_binary_and_case_insensitive() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 2 k "), Ok(2048));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in [
            "",
            "G",
            "4X",
            "-1",
            "1.5G",
            "0",
            "0G",
            "17T",
            "99999999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn byte_size_deserializes_from_number_or_string() {
        let a: ByteSize = serde_json::from_str("\"4G\"").unwrap();
        let b: ByteSize = serde_json::from_str("4294967296").unwrap();
        assert_eq!((a, b), (ByteSize(4 << 30), ByteSize(4 << 30)));
        assert!(serde_json::from_str::<ByteSize>("\"4Q\"").is_err());
    }

    #[test]
    fn the_wire_pattern_matches_exactly_what_is_accepted() {
        let re = regex_automata::meta::Regex::new(&wire_size_pattern()).unwrap();
        let mut samples: Vec<String> = Vec::new();
        for n in [
            "0",
            "1",
            "9",
            "10",
            "15",
            "16",
            "17",
            "99",
            "16384",
            "16385",
            "16777216",
            "16777217",
            "17179869184",
            "17179869185",
            "17592186044416",
            "17592186044417",
            "007",
            "99999999999999999999",
        ] {
            for suffix in [
                "", "b", "B", "k", "K", "kb", "KiB", "m", "MB", "g", "GiB", "t", "T", "tb", "x",
                "KB ", "ii",
            ] {
                samples.push(format!("{n}{suffix}"));
                samples.push(format!("{n} {suffix}"));
                samples.push(format!("{n}  {suffix}"));
                samples.push(format!(" {n}{suffix}"));
            }
        }
        for s in samples {
            assert_eq!(
                re.is_match(&s),
                parse_wire_size(&s).is_ok(),
                "{s:?} vs {}",
                wire_size_pattern()
            );
        }
    }

    #[test]
    fn format_size_is_short() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(4 << 30), "4.0 GiB");
        assert_eq!(format_size(64 << 20), "64.0 MiB");
    }
}

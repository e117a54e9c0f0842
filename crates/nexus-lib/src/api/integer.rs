//! JSON integers as JSON Schema defines them: `2128.0` is the integer 2128 (a number whose
//! fractional part is zero), so the daemon accepts what its OpenAPI `integer` schemas admit.

use serde::Deserializer;
use serde::de::{Error, Visitor};

/// An optional `u32` that also accepts an integral float (`64.0`).
pub fn option_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u32>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer from 0 to 4294967295, or null")
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            u32::try_from(v)
                .map(Some)
                .map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            u32::try_from(v)
                .map(Some)
                .map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
            integral(v)
                .ok_or_else(|| E::custom(format!("{v} is not an integer")))
                .and_then(|v| self.visit_u64(v))
        }
    }
    d.deserialize_option(V)
}

/// `v` as a `u64` when it is a non-negative integer exactly.
pub fn integral(v: f64) -> Option<u64> {
    (v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v)).then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "option_u32")]
        n: Option<u32>,
    }

    #[test]
    fn integral_floats_are_integers() {
        let parse = |s: &str| serde_json::from_str::<T>(s).map(|t| t.n);
        assert_eq!(parse(r#"{"n":64.0}"#).unwrap(), Some(64));
        assert_eq!(parse(r#"{"n":64}"#).unwrap(), Some(64));
        assert_eq!(parse(r#"{"n":null}"#).unwrap(), None);
        assert_eq!(parse("{}").unwrap(), None);
        assert!(parse(r#"{"n":64.5}"#).is_err());
        assert!(parse(r#"{"n":-1}"#).is_err());
        assert!(parse(r#"{"n":"64"}"#).is_err());
    }
}

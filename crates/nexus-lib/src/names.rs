//! Names of resources: `[a-z0-9][a-z0-9-]{0,62}`, and never something that reads as an id, so that
//! every path segment `{id-or-name}` means exactly one resource.

/// The naming rule as a regular expression (the OpenAPI schemas' `pattern`); names of the form
/// of a UUID are refused besides.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,62}$";

/// Longest name accepted (bytes).
pub const MAX_NAME_LEN: usize = 63;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name must not be empty")]
    Empty,
    #[error("name is {0} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    #[error("name must start with a lowercase letter or a digit")]
    BadStart,
    #[error("name may contain only lowercase letters, digits and '-' (found {0:?})")]
    BadChar(char),
    #[error("name must not have the form of an id (a UUID)")]
    LooksLikeId,
}

/// Checks `name` against the naming rule.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let first = name.chars().next().ok_or(NameError::Empty)?;
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(NameError::BadStart);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar(c));
    }
    if uuid::Uuid::try_parse(name).is_ok() {
        return Err(NameError::LooksLikeId);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_simple_names() {
        for ok in ["a", "web-1", "0abc", &"x".repeat(63)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(&"x".repeat(64)), Err(NameError::TooLong(64)));
        assert_eq!(validate_name("-a"), Err(NameError::BadStart));
        assert_eq!(validate_name("Web"), Err(NameError::BadStart));
        assert_eq!(validate_name("a_b"), Err(NameError::BadChar('_')));
        assert_eq!(validate_name("a/b"), Err(NameError::BadChar('/')));
        assert_eq!(
            validate_name("0190b3a2-7c1e-7d2a-9f00-1234567890ab"),
            Err(NameError::LooksLikeId)
        );
    }
}

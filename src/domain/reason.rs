//! Why somebody asks for a change: the reason of a library edit, the
//! comment or reason of a decision on a change request, the reason of a
//! modification lock. One type, so the bound is written once.

use crate::error::{AppError, AppResult};

/// Trimmed, non-empty, at most [`Reason::MAX_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

impl Reason {
    pub const MAX_CHARS: usize = 500;

    /// Parses optional text given for argument `field`: absent or blank is
    /// `None`.
    ///
    /// # Errors
    /// `VALIDATION` naming `field` when it is too long.
    pub fn parse(raw: Option<&str>, field: &str) -> AppResult<Option<Self>> {
        match raw.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(None),
            Some(t) if t.chars().count() > Self::MAX_CHARS => {
                Err(AppError::validation(field, format!("must be at most {} characters", Self::MAX_CHARS)))
            }
            Some(t) => Ok(Some(Self(t.to_owned()))),
        }
    }

    /// As [`Reason::parse`], for a reason that must be given; `why` is the
    /// message when it is not.
    ///
    /// # Errors
    /// `VALIDATION` naming `field` when absent, blank or too long.
    pub fn parse_required(raw: Option<&str>, field: &str, why: &str) -> AppResult<Self> {
        Self::parse(raw, field)?.ok_or_else(|| AppError::validation(field, why))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_trimmed_and_blank_is_none() {
        assert_eq!(Reason::parse(Some("  why  "), "reason").unwrap().unwrap().as_str(), "why");
        assert_eq!(Reason::parse(Some("   "), "reason").unwrap(), None);
        assert_eq!(Reason::parse(None, "reason").unwrap(), None);
    }

    #[test]
    fn a_reason_of_501_characters_is_refused_naming_the_field() {
        let long = "x".repeat(501);
        let err = Reason::parse(Some(&long), "comment").unwrap_err();
        assert!(matches!(err, AppError::Validation { ref field, .. } if field == "comment"), "{err:?}");
        assert!(Reason::parse(Some(&"x".repeat(500)), "comment").unwrap().is_some());
    }

    #[test]
    fn a_required_reason_says_why_it_is_required() {
        let err = Reason::parse_required(Some(" "), "reason", "is required").unwrap_err();
        assert_eq!(err.message(), "reason: is required");
    }
}

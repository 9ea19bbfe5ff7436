//! Phone numbers, normalised once so that duplicates are found by equality.

use crate::error::{AppError, AppResult};

/// A normalised phone number: a mainland mobile as its 11 digits
/// (`13812345678`), anything else as `+` and 6–15 digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Phone(String);

impl Phone {
    pub fn parse(raw: &str, field: &str) -> AppResult<Self> {
        let trimmed = raw.trim();
        let international = trimmed.starts_with('+') || trimmed.starts_with("00");
        let mut digits = String::with_capacity(trimmed.len());
        for c in trimmed.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '(' | ')' | '.' | '+' => {}
                _ => return Err(AppError::validation(field, format!("{raw:?} is not a phone number"))),
            }
        }
        let digits = if trimmed.starts_with("00") { digits[2..].to_owned() } else { digits };
        let mainland = if international { digits.strip_prefix("86") } else { Some(digits.as_str()) };
        if let Some(local) = mainland
            && local.len() == 11
            && local.starts_with('1')
        {
            return Ok(Self(local.to_owned()));
        }
        if international && (6..=15).contains(&digits.len()) {
            return Ok(Self(format!("+{digits}")));
        }
        Err(AppError::validation(field, format!("{raw:?} is not a phone number")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }

    /// `138****5678`: the first three and the last four digits.
    pub fn mask(stored: &str) -> String {
        let chars: Vec<char> = stored.chars().collect();
        if chars.len() <= 7 {
            return "*".repeat(chars.len());
        }
        let head: String = chars[..3].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mainland_mobiles_normalise_to_eleven_digits() {
        for raw in ["13812345678", "138 1234 5678", "+86 138-1234-5678", "0086 13812345678"] {
            assert_eq!(Phone::parse(raw, "phone").unwrap().as_str(), "13812345678", "{raw}");
        }
    }

    #[test]
    fn other_numbers_keep_their_country_code() {
        assert_eq!(Phone::parse("+852 9123 4567", "phone").unwrap().as_str(), "+85291234567");
    }

    #[test]
    fn letters_and_short_numbers_are_refused() {
        for raw in ["abc", "12345", "1381234567x", "", "23812345678"] {
            assert!(Phone::parse(raw, "phone").is_err(), "{raw}");
        }
    }

    #[test]
    fn masking_keeps_three_and_four_digits() {
        assert_eq!(Phone::mask("13812345678"), "138****5678");
    }
}

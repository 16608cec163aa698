//! Tags: labels on contacts, referred to by name.

use crate::ValidationError;

/// Checks and normalises a tag name: trimmed, 1–64 characters, no control characters.
pub fn tag_name(name: &str) -> Result<String, ValidationError> {
    let t = name.trim();
    if t.is_empty() || t.chars().count() > 64 || t.chars().any(|c| c.is_control()) {
        return Err(ValidationError::new(
            "tag",
            format!("`{t}` is not a valid tag name (1 to 64 characters, no control characters)"),
        ));
    }
    Ok(t.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn trims_and_limits() {
        assert_eq!(super::tag_name("  vip ").as_deref(), Ok("vip"));
        assert!(super::tag_name("").is_err());
        assert!(super::tag_name(&"x".repeat(65)).is_err());
    }
}

//! User passwords, hashed with argon2id.

use crate::ValidationError;
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

/// Checks the password policy (at least 8 characters, at most 1024) and hashes it.
pub fn hash(password: &str) -> Result<String, ValidationError> {
    let n = password.chars().count();
    if n < 8 {
        return Err(ValidationError::new(
            "password",
            "must be at least 8 characters",
        ));
    }
    if n > 1024 {
        return Err(ValidationError::new(
            "password",
            "must be at most 1024 characters",
        ));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ValidationError::new("password", format!("could not be hashed: {e}")))
}

/// Verifies a password against a stored PHC string; a malformed hash verifies nothing.
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hash_and_verify() {
        let h = super::hash("correct horse").expect("hashes");
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("correct horse", &h));
        assert!(!super::verify("wrong horse", &h));
        assert!(super::hash("short").is_err());
    }
}
